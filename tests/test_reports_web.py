"""`python -m reports --serve`: the JSON API checked number for number against
`python -m reports --format json` for the same filters, on real SQLite files and PostgreSQL; its
400s, 404s and /health; that it never writes the database; and the dashboard page in a real
headless Chromium (Debian's chromium and chromium-driver, driven by Selenium)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from migrations import CURRENT_SCHEMA_VERSION, upgrade
from reports.cli import main
from reports.selection import utc_text
from reports.server import DashboardServer, is_loopback
from reports.source import read
from storage import CompletionRequest, open_database
from tests.conftest import ROOT, free_port, wait_until

NOW = datetime.now(UTC).replace(microsecond=0)
BASE = datetime(2026, 11, 1, tzinfo=UTC)

SECRET = "sk-proj-abcdefghijklmnop1234567890"
HOSTILE_MODEL = '<img src=x onerror="document.title=1">'  # a client chooses the model name


@pytest.fixture(autouse=True)
def _now_is_when_each_test_starts():
    """Rows made relative to now are judged by the server against its own now: the two must be
    seconds apart, not the minutes a whole suite takes to reach a test."""
    global NOW
    NOW = datetime.now(UTC).replace(microsecond=0)


# -- test data -------------------------------------------------------------------------------

def make_rows(n: int = 300, seed: int = 5, start: datetime = BASE, span: timedelta = timedelta(days=3)) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ok = rng.random() > 0.15
        streamed = rng.random() < 0.55
        status, error_type = (200, None) if ok else rng.choice([(429, "rate_limit_exceeded"), (500, "http_500"), (None, "connection_refused")])
        latency = rng.randint(40, 9000)
        ttft = rng.randint(10, latency) if streamed and ok else None
        prompt, completion = rng.randint(1, 4000), (rng.randint(1, 900) if ok else None)
        rows.append({
            "timestamp": utc_text(start + span * i / n + timedelta(microseconds=i)),
            "success": ok, "status_code": status, "response_time_ms": latency,
            "model": rng.choice(["gpt-a", "gpt-b", "claude-c", None, HOSTILE_MODEL]),
            "request_model": "req", "provider": rng.choice(["openai", "anthropic"]), "host": "api.example",
            "path": rng.choice(["/v1/chat/completions", f"/v1/keys/{SECRET}/chat"]),
            "origin": rng.choice(["svc-a", "svc-b", None]), "is_streaming": streamed,
            "time_to_first_token_ms": ttft, "time_to_last_token_ms": latency - 5 if ttft else None,
            "tokens_per_second": round(rng.uniform(5, 90), 3) if ttft else None,
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion if completion else None, "message_count": rng.randint(1, 9),
            "cached_tokens": rng.randint(0, 100), "reasoning_tokens": rng.choice([None, 0, 7]),
            "cost_usd": None if not ok or i % 9 == 0 else (prompt * 3 + (completion or 0) * 11) / 1e6,
            "agent": rng.choice(["claude-code", "codex", None]), "session_id": rng.choice(["s-1", "s-2", None]),
            "retry_count": rng.choice([0, 0, 1]),
            "error_type": error_type,
            "error_message": None if ok else f"failed; api_key={SECRET} was refused",
        })
    return rows


def quota_rows() -> list[dict]:
    """Calls in the last hour that stated a subscription's quota: the quota panel has a row."""
    return [{"timestamp": utc_text(NOW - timedelta(minutes=m)), "success": True, "status_code": 200,
             "response_time_ms": 700, "is_streaming": False, "model": "claude-c", "provider": "anthropic",
             "auth_mode": "oauth", "quota_used_percent": 40.0 + (50 - m) / 2, "quota_window_minutes": 300,
             "quota_reset_at": utc_text(NOW + timedelta(hours=3))} for m in (50, 30, 10)]


def load(location: str, rows: list[dict]) -> str:
    db = open_database(location)
    upgrade(db)
    with db.atomic():
        for row in rows:
            CompletionRequest.insert(row).execute(db)
    db.close()
    return location


@pytest.fixture
def database(tmp_path) -> str:
    return load(str(tmp_path / "metrics.db"), make_rows() + quota_rows())


# -- a server, and the CLI's JSON ---------------------------------------------------------------

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, whatever $http_proxy says


def fetch(url: str, *, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with NO_PROXY.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class Served:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **kwargs) -> tuple[int, object]:
        status, _, body = fetch(self.url + path.lstrip("/"), **kwargs)
        return status, json.loads(body)

    def ok(self, path: str) -> object:
        status, body = self.get(path)
        assert status == 200, body
        return body


@contextmanager
def serving(location: str, **options):
    server = DashboardServer(location, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(server.url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def cli_json(location: str, *args: str) -> dict:
    out = io.StringIO()
    assert main(["--db", location, "--format", "json", *args], console=Console(file=out)) == 0
    return json.loads(out.getvalue())


def without_time(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "generated_at_utc"}


# -- /api/report ------------------------------------------------------------------------------

SINCE, UNTIL = "2026-11-01T12:00:00Z", "2026-11-03T06:30:00Z"
FILTERS = [
    ([], ""),
    (["--since", SINCE, "--until", UNTIL], f"since={SINCE}&until={UNTIL}"),
    (["--model", "gpt-a", "--model", HOSTILE_MODEL], "model=gpt-a&model=" + urllib.request.quote(HOSTILE_MODEL)),
    (["--provider", "openai", "--host", "api.example"], "provider=openai&host=api.example"),
    (["--origin", "svc-b", "--errors-only"], "origin=svc-b&errors_only=true"),
    (["--agent", "codex", "--streamed"], "agent=codex&streamed=true"),
    (["--non-streamed", "--since", "2026-11-02"], "streamed=false&since=2026-11-02"),
    (["--session", "s-1"], "session=s-1"),
    (["--session", "s-1", "--session", "s-2", "--top", "3"], "session=s-1&session=s-2&top=3"),
    (["--group-by", "agent"], "group_by=agent"),
    (["--group-by", "streamed", "--model", "claude-c"], "group_by=streamed&model=claude-c"),
    (["--group-by", "hour", "--until", "2026-11-02"], "group_by=hour&until=2026-11-02"),
    (["--group-by", "path"], "group_by=path"),
    (["--model", "no-such-model"], "model=no-such-model"),
]


@pytest.mark.parametrize("args, query", FILTERS, ids=[q or "everything" for _, q in FILTERS])
def test_api_report_is_the_cli_json_for_the_same_filters(database, args, query):
    with serving(database) as server:
        api = server.ok("/api/report?" + query)
    assert without_time(api) == without_time(cli_json(database, *args))


def test_a_relative_since_selects_what_the_cli_selects_from_the_same_moment(database):
    with serving(database) as server:
        api = server.ok("/api/report?since=2h")
    bound = api["filters"]["since_utc"]
    assert datetime.fromisoformat(bound.replace("Z", "+00:00")) == pytest.approx(datetime.now(UTC) - timedelta(hours=2), abs=timedelta(seconds=30))
    assert api["overview"]["requests"] == 3 and api["quota"]  # the quota calls of the last hour
    assert without_time(api) == without_time(cli_json(database, "--since", bound))


def test_a_path_and_a_message_holding_a_key_are_shown_redacted(database):
    with serving(database) as server:
        bodies = [server.get(p)[1] for p in ("/api/report?group_by=path", "/api/calls?page_size=500",
                                              "/completion_requests?limit=1000", "/metrics")]
    text = json.dumps(bodies)
    assert SECRET not in text
    assert "/v1/keys/***/chat" in text and "api_key=*** was refused" in text


# -- /api/timeline ----------------------------------------------------------------------------

def test_timeline_without_a_bucket_is_the_reports_timeline(database):
    with serving(database) as server:
        api = server.ok(f"/api/timeline?until={UNTIL}&model=gpt-b")
    cli = cli_json(database, "--until", UNTIL, "--model", "gpt-b")
    assert {k: api[k] for k in cli["timeline"]} == cli["timeline"]
    assert api["filters"] == cli["filters"]


@pytest.mark.parametrize("bucket", ["hour", "day"])
def test_timeline_buckets_hold_what_the_report_groups_by_hour_or_day(database, bucket):
    with serving(database) as server:
        api = server.ok(f"/api/timeline?bucket={bucket}&until=2026-11-10&origin=svc-a")
    table = cli_json(database, "--group-by", bucket, "--until", "2026-11-10", "--origin", "svc-a")["groups"][0]["rows"]
    expected = {r["key"][bucket]: (r["requests"], r["errors"]) for r in table}
    assert api["bucket"] == bucket
    found = {b["start_utc"]: (b["requests"], b["errors"]) for b in api["buckets"] if b["requests"]}
    assert found == expected
    assert sum(b["requests"] for b in api["buckets"]) == sum(n for n, _ in expected.values())


# -- /api/calls -------------------------------------------------------------------------------

def test_calls_come_newest_first_one_page_at_a_time_and_cover_the_selection(database):
    query = f"since={SINCE}&until={UNTIL}&provider=openai"
    cli = cli_json(database, "--since", SINCE, "--until", UNTIL, "--provider", "openai")
    seen = []
    with serving(database) as server:
        page = 1
        while True:
            body = server.ok(f"/api/calls?{query}&page={page}&page_size=17")
            assert body["total"] == cli["overview"]["requests"] and body["page_size"] == 17
            seen += body["calls"]
            if page >= body["pages"]:
                break
            page += 1
    assert len(seen) == cli["overview"]["requests"] == len({c["id"] for c in seen})
    stamps = [c["timestamp_utc"] for c in seen]
    assert stamps == sorted(stamps, reverse=True)
    assert sum(not c["success"] for c in seen) == cli["overview"]["errors"]
    assert sum(c["is_streaming"] for c in seen) == cli["overview"]["streamed"]
    assert sum(c["prompt_tokens"] for c in seen) == cli["overview"]["prompt_tokens"]
    assert sum(c["cost_usd"] for c in seen if c["cost_usd"] is not None) == pytest.approx(cli["overview"]["cost_usd"])


def test_the_calls_of_one_session_are_the_reports_session_calls(database):
    cli = cli_json(database, "--session", "s-2")["session"]["calls"]
    with serving(database) as server:
        calls = server.ok("/api/calls?session=s-2&page_size=500")["calls"]
    assert len(calls) == len(cli)
    for api, listed in zip(reversed(calls), cli):  # the report lists a session oldest first
        assert {k: api[k] for k in listed if k in api} == {k: v for k, v in listed.items() if k in api}


def test_no_page_holds_more_than_the_bound(database):
    with serving(database) as server:
        status, body = server.get("/api/calls?page_size=501")
        assert status == 400 and "page_size" in body["error"]
        assert len(server.ok("/api/calls")["calls"]) == 50


# -- the original project's endpoints ----------------------------------------------------------

def test_metrics_has_the_originals_fields_with_the_reports_numbers(database):
    start, end = "2026-11-01T06:00:00", "2026-11-02T18:00:00"
    with serving(database) as server:
        api = server.ok(f"/metrics?start={start}&end={end}")
    window = ["--since", start, "--until", "2026-11-02T18:00:00.000001Z"]  # `end` is inclusive
    whole, streamed, plain = (cli_json(database, *window, *extra, "--top", "1000") for extra in
                              ([], ["--streamed", "--group-by", "streamed"], ["--non-streamed", "--group-by", "streamed"]))
    o = whole["overview"]
    assert api["requests"]["total"] == {
        "total": o["requests"], "successful": o["successes"], "failed": o["errors"], "success_rate": o["success_rate"],
        "tokens": {"total": o["prompt_tokens"] + o["completion_tokens"], "prompt_total": o["prompt_tokens"],
                   "completion_total": o["completion_tokens"]}, "cost_usd": o["cost_usd"]}
    for name, cli in (("streamed", streamed), ("non_streamed", plain)):
        mode, row = api["requests"][name], cli["groups"][0]["rows"][0]
        assert (mode["total"], mode["successful"], mode["failed"]) == (row["requests"], row["requests"] - row["errors"], row["errors"])
        assert mode["tokens"]["prompt_total"] == cli["overview"]["prompt_tokens"]
        assert mode["response_time_ms"] == row["latency_ms"] and mode["time_to_first_token_ms"] == row["ttft_ms"]
        types: dict = {}
        for kind in cli["errors"]["kinds"]:
            types[kind["error_type"]] = types.get(kind["error_type"], 0) + kind["count"]
        assert mode["error_types"] == types
    assert api["requests"]["streamed"]["total"] + api["requests"]["non_streamed"]["total"] == o["requests"]
    models = next(g for g in whole["groups"] if g["group_by"] == ["model"])["rows"]
    assert api["model_distribution"] == {r["key"]["model"]: r["requests"] for r in models if r["key"]["model"]}
    assert list(api["model_distribution"].values()) == sorted(api["model_distribution"].values(), reverse=True)
    origins = next(g for g in whole["groups"] if g["group_by"] == ["origin"])["rows"]
    assert api["origin_distribution"] == {r["key"]["origin"]: r["requests"] for r in origins if r["key"]["origin"]}


def test_metrics_end_includes_a_call_at_that_very_time(database):
    stamp = make_rows()[40]["timestamp"]
    with serving(database) as server:
        at = server.ok(f"/metrics?start={stamp}&end={stamp}")
    assert at["requests"]["total"]["total"] == 1


def test_completion_requests_are_the_originals_rows_newest_first_and_bounded(database):
    with serving(database) as server:
        status, headers, body = fetch(server.url + f"completion_requests?start={SINCE}&limit=5")
        calls = server.ok(f"/api/calls?since={SINCE}&page_size=5")
    rows = json.loads(body)
    assert status == 200 and int(headers["X-Total-Count"]) == calls["total"] and len(rows) == 5
    for row, call in zip(rows, calls["calls"]):
        assert row == {
            "timestamp": call["timestamp_utc"], "is_streaming": call["is_streaming"], "success": call["success"],
            "error_type": call["error_type"], "message_count": call["message_count"],
            "timing": {"time_to_first_token_ms": call["time_to_first_token_ms"],
                       "time_to_last_token_ms": call["time_to_last_token_ms"], "response_time_ms": call["response_time_ms"]},
            "tokens": {"total": call["total_tokens"], "prompt": call["prompt_tokens"], "completion": call["completion_tokens"]},
            "model": call["model"], "origin": call["origin"],
        }


# -- /health and errors -------------------------------------------------------------------------

def test_health_names_the_database_and_its_schema_version(database, tmp_path):
    with serving(database) as server:
        assert server.get("/health") == (200, {"status": "ok", "database": database, "schema_version": CURRENT_SCHEMA_VERSION})
    missing = str(tmp_path / "none" / "metrics.db")
    with serving(missing) as server:
        status, body = server.get("/health")
        assert status == 200 and body["schema_version"] is None and "No database" in body["note"]
        report = server.ok("/api/report")
        assert report["overview"]["requests"] == 0 and "No database" in report["note"]
    assert not Path(missing).parent.exists()  # nothing created


def test_a_file_that_is_not_a_database_is_a_503_with_one_line(tmp_path):
    path = tmp_path / "metrics.db"
    path.write_bytes(b"not a database" * 100)
    with serving(str(path)) as server:
        for endpoint in ("/health", "/api/report", "/api/calls", "/api/timeline", "/metrics", "/completion_requests"):
            status, body = server.get(endpoint)
            assert status == 503 and str(path) in body["error"] and "\n" not in body["error"], (endpoint, body)
    assert path.read_bytes() == b"not a database" * 100


def test_an_older_schema_is_a_503_with_one_line_saying_to_upgrade(database):
    con = sqlite3.connect(database)
    con.execute("DELETE FROM schema_version WHERE version = (SELECT max(version) FROM schema_version)")
    con.commit()
    con.close()
    with serving(database) as server:
        for path in ("/health", "/api/report", "/metrics"):
            status, body = server.get(path)
            assert status == 503 and "migrations upgrade" in body["error"] and "\n" not in body["error"]


BAD = [
    ("/api/report?since=yesterday", "since"),
    ("/api/report?since=2026-11-03&until=2026-11-02", "must be before"),
    ("/api/report?top=0", "top"),
    ("/api/report?top=ten", "top"),
    ("/api/report?group_by=colour", "group_by"),
    ("/api/report?errors_only=perhaps", "errors_only"),
    ("/api/report?streamed=sometimes", "streamed"),
    ("/api/report?since=1h&since=2h", "since given 2 times"),
    ("/api/report?model=", "empty filter value"),
    ("/api/report?origin=a%00b", "NUL"),
    ("/api/report?colour=red", "unknown parameter 'colour'"),
    ("/api/report?since=1000000w", "out of range"),
    ("/api/calls?page=0", "page"),
    ("/api/timeline?bucket=week", "bucket"),
    ("/metrics?start=24h", "start"),
    ("/metrics?since=24h", "unknown parameter 'since'"),
    ("/completion_requests?limit=10001", "limit"),
    ("/health?verbose=1", "unknown parameter"),
]


@pytest.mark.parametrize("path, says", BAD, ids=[p for p, _ in BAD])
def test_a_bad_parameter_is_a_400_with_one_line_of_json(database, path, says):
    with serving(database) as server:
        status, headers, body = fetch(server.url + path.lstrip("/"))
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    document = json.loads(body)
    assert list(document) == ["error"] and says in document["error"] and "\n" not in document["error"]


def test_an_unknown_path_is_a_json_404_writing_methods_a_405_and_head_no_body(database):
    with serving(database) as server:
        assert server.get("/api/nothing") == (404, {"error": "no such path: /api/nothing; see docs/api.md"})
        assert server.get("/../reports/source.py")[0] == 404
        status, body = server.get("/api/report", method="POST")
        assert status == 405 and "read-only" in body["error"]
        status, headers, body = fetch(server.url + "api/report", method="HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000


def test_a_request_to_a_name_that_is_not_loopback_is_refused(database):
    """DNS rebinding: a page elsewhere that points its own name at 127.0.0.1 gets nothing."""
    with serving(database) as server:
        status, body = server.get("/api/report", headers={"Host": "attacker.example:8321"})
        assert status == 403 and "loopback" in body["error"]
        assert server.get("/health", headers={"Host": "localhost:8321"})[0] == 200
    with serving(database, allow_remote=True) as server:
        assert server.get("/health", headers={"Host": "dashboard.example"})[0] == 200


def test_the_page_and_its_files_are_served_with_a_strict_content_security_policy(database):
    with serving(database) as server:
        for path, kind in (("", "text/html"), ("app.js", "text/javascript"), ("style.css", "text/css")):
            status, headers, body = fetch(server.url + path)
            assert status == 200 and headers["Content-Type"].startswith(kind) and body
            assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    assert sum((ROOT / "reports" / "web" / f).stat().st_size for f in ("index.html", "app.js", "style.css")) < 100_000


def test_page_text_from_the_database_is_never_inserted_as_markup():
    script = (ROOT / "reports" / "web" / "app.js").read_text()
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script
    assert "document.write" not in script and "eval(" not in script


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("example.com", False),
])
def test_only_loopback_addresses_count_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


# -- the command --------------------------------------------------------------------------------

def run_reports(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LLM_METRICS_DB"}
    return subprocess.run([sys.executable, "-m", "reports", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_an_address_other_machines_reach_needs_allow_remote(database):
    refused = run_reports("--db", database, "--serve", "--bind", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--allow-remote" in refused.stderr
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning, then no listening at all.
    warned = run_reports("--db", database, "--serve", "--bind", "192.0.2.1", "--allow-remote", "--port", str(free_port()))
    assert "warning: serving on 192.0.2.1" in warned.stderr and "cannot listen" in warned.stderr and warned.returncode == 2


@pytest.mark.parametrize("args, says", [
    (["--serve", "--since", "1h"], "--serve takes no --since"),
    (["--serve", "--format", "json"], "--serve takes no --format"),
    (["--port", "9000"], "--port goes with --serve"),
    (["--serve", "--port", "70000"], "port"),
])
def test_serve_flags_that_do_not_go_together_are_one_error_line(database, args, says):
    result = run_reports("--db", database, *args)
    assert result.returncode == 2 and says in result.stderr and result.stderr.count("\n") == 1


class ServerProcess:
    """`python -m reports --serve` as a user starts it, on a free port; its log in a file."""

    def __init__(self, location: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {k: v for k, v in os.environ.items() if k != "LLM_METRICS_DB"}
        self.log = log
        self._log = open(log, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "reports", "--db", location, "--serve", "--port", str(self.port)],
                                        cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        assert wait_until(lambda: self._answers() or self.process.poll() is not None, timeout=30)
        assert self.process.poll() is None, log.read_text()

    def _answers(self) -> bool:
        try:
            return fetch(self.url + "health")[0] in (200, 503)
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)
        self._log.close()


@pytest.fixture
def server_process(tmp_path):
    started = []

    def start(location: str) -> ServerProcess:
        started.append(ServerProcess(location, tmp_path / f"serve-{len(started)}.log"))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


ALL_PATHS = ["", "app.js", "style.css", "health", "api/report", "api/report?since=24h&group_by=agent", "api/report?session=s-1",
             "api/calls?page=2&page_size=30", "api/timeline?bucket=minute&since=3h", "api/timeline", "metrics",
             "completion_requests?limit=20", "api/report?since=bad", "nothing"]


def test_the_database_is_byte_identical_after_a_session_of_requests_and_no_wal_is_left(database, server_process):
    """The proxy is not running: the file is in WAL mode with no -wal beside it. Reading it must
    create neither -wal nor -shm (mode=ro alone would) and change no byte."""
    path = Path(database)
    before, files_before = sha256(path), sorted(os.listdir(path.parent))
    assert not Path(f"{database}-wal").exists() and open(path, "rb").read(20)[18:20] == b"\x02\x02"
    server = server_process(database)
    for _ in range(3):
        for p in ALL_PATHS:
            assert fetch(server.url + p)[0] in (200, 400, 404)
    server.stop()
    assert sha256(path) == before
    assert sorted(os.listdir(path.parent)) == files_before + ["serve-0.log"]


def test_the_terminal_report_leaves_no_wal_beside_a_quiet_file_either(database):
    path = Path(database)
    before = sha256(path)
    for args in ([], ["--since", "2h"], ["--session", "s-1"]):
        cli_json(database, *args)
    assert sha256(path) == before and sorted(os.listdir(path.parent)) == ["metrics.db"]


def test_a_server_reading_while_the_proxy_writes_sees_each_new_call(database, server_process):
    """A writer holds the file open in WAL mode (as the proxy does): each request reads through the
    WAL, so rows the writer just committed are counted at once."""
    writer = open_database(database)
    try:
        server = server_process(database)
        before = json.loads(fetch(server.url + "api/report")[2])["overview"]["requests"]
        for added in range(1, 4):
            CompletionRequest.insert(quota_rows()[0]).execute(writer)
            assert json.loads(fetch(server.url + "api/report")[2])["overview"]["requests"] == before + added
    finally:
        writer.close()


def test_a_read_of_a_quiet_file_that_the_proxy_opens_meanwhile_is_read_again(database):
    """The immutable read of a quiet WAL file is checked after: a proxy that opened and wrote the
    file during it makes `read` read it again, through the WAL."""
    calls = []

    def count_while_a_writer_arrives(src) -> int:
        calls.append(src.quiet_stamp)
        if len(calls) == 1:
            db = open_database(database)  # a writer starts: -wal and -shm appear
            CompletionRequest.insert(quota_rows()[0]).execute(db)
            db.close()
            db = open_database(database)  # and stays open, as a running proxy does
            count_while_a_writer_arrives.writer = db  # type: ignore[attr-defined]
        return src.one("SELECT count(*) FROM completion_requests")[0]

    try:
        assert read(database, count_while_a_writer_arrives) == len(make_rows()) + len(quota_rows()) + 1
    finally:
        count_while_a_writer_arrives.writer.close()  # type: ignore[attr-defined]
    assert calls[0] is not None and calls[1] is None  # immutable first, then through the WAL


# -- PostgreSQL ---------------------------------------------------------------------------------

def test_the_api_on_postgres_is_the_cli_json_for_the_same_filters(pg_url):
    load(pg_url, make_rows(150) + quota_rows())
    with serving(pg_url) as server:
        for args, query in (FILTERS[1], FILTERS[5], FILTERS[9]):
            assert without_time(server.ok("/api/report?" + query)) == without_time(cli_json(pg_url, *args))
        health = server.ok("/health")
        assert health["status"] == "ok" and health["schema_version"] == CURRENT_SCHEMA_VERSION
        calls = server.ok("/api/calls?page_size=500")
        assert calls["total"] == 153 and [c["id"] for c in calls["calls"]][:3] == [153, 152, 151]
        timeline = server.ok("/api/timeline?bucket=day&until=2026-12-01")
        assert sum(b["requests"] for b in timeline["buckets"]) == 150
        metrics = server.ok("/metrics")
        assert metrics["requests"]["total"]["total"] == 153


# -- the page in a real browser ----------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def browser(monkeypatch):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        missing = f"no {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("LLM_METRICS_REQUIRE_BROWSER") == "1":  # CI installs them: missing is a failure there
            pytest.fail(missing)
        pytest.skip(missing)
    # Selenium Manager (which downloads drivers and browsers) is never run: the driver's path is
    # given, and were it run anyway, SE_MANAGER_PATH names no file, so the test fails.
    monkeypatch.setenv("SE_MANAGER_PATH", "/nonexistent/selenium-manager")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--no-proxy-server", "--disable-gpu"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def ready(driver, range_: str) -> None:
    assert wait_until(lambda: driver.execute_script(
        "return document.body.dataset.state === 'ready' && document.body.dataset.range === arguments[0]", range_), timeout=30), \
        driver.execute_script("return [document.body.dataset.state, document.getElementById('status').textContent]")


def shown(driver) -> dict:
    return driver.execute_script("""
        const out = {};
        for (const id of ["requests", "errors", "streamed", "prompt_tokens", "completion_tokens", "cost_usd", "success_rate"])
            out[id] = document.getElementById(id).dataset.value;
        return out;""")


def same_numbers(page: dict, report: dict) -> bool:
    o = report["overview"]
    return all((page[k] == "" and o[k] is None) or (page[k] != "" and float(page[k]) == pytest.approx(o[k], rel=1e-12))
               for k in page)


def press(driver, selector: str) -> None:
    """A click as a user makes it: the element scrolled to the middle first (not under the header)."""
    element = driver.find_element("css selector", selector)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def severe(driver) -> list:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def page_rows() -> list[dict]:
    """Calls of the last 50 minutes, and older ones from 3 days back: the 1 h and 1 w views differ."""
    recent = make_rows(120, seed=9, start=NOW - timedelta(minutes=50), span=timedelta(minutes=45))
    return recent + make_rows(200, seed=3, start=NOW - timedelta(days=3), span=timedelta(hours=20)) + quota_rows()


def test_the_dashboard_shows_the_apis_numbers_and_changes_timeframe(tmp_path, browser, server_process):
    database = load(str(tmp_path / "metrics.db"), page_rows())
    server = server_process(database)
    browser.get(server.url + "#1h")
    ready(browser, "1h")
    hour = json.loads(fetch(server.url + "api/report?since=1h")[2])
    assert same_numbers(shown(browser), hour) and hour["overview"]["requests"] == 123
    assert browser.execute_script("return document.querySelectorAll('#timeline svg rect').length") > 0
    assert browser.execute_script("return document.querySelectorAll('#quota tbody tr').length") == 1
    # a hostile model name is text on the page, never an element
    assert HOSTILE_MODEL in browser.find_element("id", "latency").text
    assert browser.execute_script("return document.querySelectorAll('main img').length") == 0 and browser.title != "1"
    browser.save_screenshot(str(tmp_path / "dashboard-1h.png"))

    browser.find_element("css selector", "#ranges button[data-range='1w']").click()
    ready(browser, "1w")
    week = json.loads(fetch(server.url + "api/report?since=7d")[2])
    assert week["overview"]["requests"] == 323 and same_numbers(shown(browser), week)
    assert browser.current_url.endswith("#1w")
    assert browser.execute_script("return document.querySelector('#ranges [aria-pressed=true]').dataset.range") == "1w"
    press(browser, "#dims button[data-dim='agent']")
    ready(browser, "1w")
    agents = json.loads(fetch(server.url + "api/report?since=7d&group_by=agent")[2])["groups"][0]["rows"]
    assert browser.execute_script("return [...document.querySelectorAll('#usage tbody tr td:first-child')].map(td => td.textContent)") \
        == [r["key"]["agent"] or "(none)" for r in agents]
    # a model picked in the latency table filters every part of the page, and the link keeps it
    press(browser, "#latency button.key[data-dim='model']")
    ready(browser, "1w")
    model = browser.find_element("css selector", "#filters strong").text
    picked = json.loads(fetch(server.url + "api/report?since=7d&model=" + urllib.request.quote(model))[2])
    assert 0 < picked["overview"]["requests"] < week["overview"]["requests"] and same_numbers(shown(browser), picked)
    assert "&model=" in browser.current_url
    browser.get(browser.current_url)  # the shared link opens the same view
    ready(browser, "1w")
    assert same_numbers(shown(browser), picked)
    press(browser, "#filters button.remove")
    ready(browser, "1w")
    assert same_numbers(shown(browser), week) and browser.current_url.endswith("#1w")
    full_height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, full_height + 120)
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    print(f"screenshots: {tmp_path}/dashboard.png, dashboard-1h.png")
    assert severe(browser) == []


def test_the_dashboard_fits_a_phone_and_follows_a_dark_scheme(tmp_path, browser, server_process):
    database = load(str(tmp_path / "metrics.db"), page_rows())
    server = server_process(database)
    browser.set_window_size(390, 844)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    browser.get(server.url + "#1d")
    ready(browser, "1d")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(21, 23, 26)"  # --bg of the dark scheme
    browser.save_screenshot(str(tmp_path / "dashboard-phone-dark.png"))
    assert severe(browser) == []


def test_auto_refresh_picks_up_new_calls(tmp_path, browser, server_process):
    database = load(str(tmp_path / "metrics.db"), page_rows())
    server = server_process(database)
    browser.get(server.url + "#1h")
    ready(browser, "1h")
    writer = open_database(database)
    try:
        CompletionRequest.insert(quota_rows()[0]).execute(writer)
    finally:
        writer.close()
    before = int(shown(browser)["requests"])
    browser.execute_script("document.getElementById('auto').checked = true")
    assert wait_until(lambda: int(shown(browser)["requests"]) == before + 1, timeout=40)
    assert severe(browser) == []



# -- docs/api.md ----------------------------------------------------------------------------------

API_DOC = (ROOT / "docs" / "api.md").read_text()


def test_docs_api_md_documents_every_endpoint_parameter_and_call_field():
    from dataclasses import fields

    from reports.api import ENDPOINTS, PARAMETERS
    from reports.calls import Call

    headings = set(re.findall(r"^#+ `GET (/[\w/]*)`", API_DOC, re.MULTILINE))
    assert headings == set(ENDPOINTS)
    for path, names in PARAMETERS.items():
        missing = [n for n in names if f"`{n}`" not in API_DOC and f'"{n}"' not in API_DOC]
        assert not missing, f"docs/api.md does not name {missing} of {path}"
    assert [f.name for f in fields(Call)] == [n for n in re.findall(r'"(\w+)":', API_DOC.split("## `GET /api/calls`")[1]
                                                                      .split("```")[1]) if n not in ("total", "page", "page_size", "pages", "calls")]
