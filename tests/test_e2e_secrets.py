"""Secrets never stored or shown: distinct secrets planted in every auth header and a `key=` query
parameter never reach the database, its WAL, a backup, or the proxy's log; a database URL's
password is shown nowhere (the proxy's log, reports, `migrations status`, doctor)."""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import peewee
import pytest

from migrations import make_backup
from storage import open_database
from tests.clients import httpx
from tests.conftest import ADDON, MITMDUMP, ROOT, free_port
from tests.provider_upstream import ProviderUpstream
from tests.upstream import Scenario

pytestmark = pytest.mark.e2e

SECRETS = {
    "authorization": "Bearer sk-planted-authorization-7c1e",
    "x-api-key": "sk-ant-planted-x-api-key-52aa",
    "api-key": "azure-planted-api-key-90d3",
    "x-goog-api-key": "AIza-planted-goog-key-11f0",
}
QUERY_SECRET = "AIza-planted-query-key-3b7d"


def test_planted_secrets_are_nowhere_on_disk_or_in_the_log(proxy, upstream):
    client = httpx.Client(proxy=proxy.url)
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    for stream in (False, True):
        response = client.post(f"{upstream.base_url}/chat/completions?key={QUERY_SECRET}&api-version=1",
                               json=dict(body, stream=stream), headers=SECRETS)
        assert response.status_code == 200
    # The upstream did get them: the proxy forwards credentials untouched.
    assert upstream.last().headers["x-api-key"] == SECRETS["x-api-key"]
    rows = proxy.rows(2)
    assert [r["path"] for r in rows] == ["/v1/chat/completions"] * 2  # no query string stored
    backup = make_backup(proxy.db_path)
    files = [p for p in proxy.db_path.parent.glob("metrics.db*")] + [backup]
    assert any(p.name.endswith("-wal") for p in files)  # the WAL is scanned while it exists
    for needle in [*SECRETS.values(), QUERY_SECRET, "planted"]:
        for path in files:
            assert needle.encode() not in path.read_bytes(), (needle, path.name)
    proxy.stop()
    for needle in [*SECRETS.values(), QUERY_SECRET]:
        assert needle not in proxy.log()
    for path in [proxy.db_path, backup]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path



# -- what providers echo: keys and the request's own text ------------------------------------

OPENAI_KEY = "sk-proj-PLANTEDopenaiKEYbody0TAILa1b2"
OPENAI_ECHO = "sk-proj-" + "*" * 20 + "TAILa1b2"  # OpenAI shows the key's last characters
GEMINI_KEY = "AIzaSyPLANTEDgeminiKEY0123456789abc"
PATH_KEY = "sk-PLANTEDpathKEY0123456789"
GEMINI_PATH_KEY = "AIzaSyPLANTEDpathGEMINI0123456789a"
UNPARSED_PATH_KEY = "sk-PLANTEDunparsedKEY012345"
STREAM_ECHO_TAIL = "STRMt41L"
PROMPT = "PLANTEDPROMPT tell me about the merger, my password is hunter2"
GENERATED = "PLANTEDGENERATED the model's own words"


def _openai_error(message: str, code: str, status: int = 401) -> Scenario:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return Scenario(status=status, error_body=json.dumps(body).encode())


ECHOES = {
    "openai-401": _openai_error(f"Incorrect API key provided: {OPENAI_ECHO}. You can find your API key at "
                                "https://platform.openai.com/account/api-keys.", "invalid_api_key"),
    "gateway-echoes-url": Scenario(status=400, error_body=json.dumps({"error": {
        "code": 400, "status": "INVALID_ARGUMENT",
        "message": f"Request to /v1/chat/completions?key={GEMINI_KEY}&alt=sse rejected: API key not valid"}}).encode()),
    "vllm-echoes-prompt": Scenario(status=400, error_body=json.dumps({
        "object": "error", "type": "BadRequestError", "param": None, "code": 400,
        "message": "1 validation error for ChatCompletionRequest\nmessages.0.content\n  Input should be a valid "
                   f"string [type=string_type, input_value={{'text': '{PROMPT}'}}, input_type=dict]"}).encode()),
    "plain-text-echoes-prompt": Scenario(status=400, error_body=f"Invalid prompt: {PROMPT}".encode(),
                                         error_content_type="text/plain"),
    "non-json-200": Scenario(status=200, error_body=GENERATED.encode() * 20, error_content_type="text/plain"),
    "stream-error-echo": Scenario(status=200, error_content_type="text/event-stream", error_body=(
        b'data: {"error": {"message": "Incorrect API key provided: sk-ant-***' + STREAM_ECHO_TAIL.encode()
        + b'", "type": "authentication_error"}}\n\n')),
}
NEEDLES = [OPENAI_KEY, "TAILa1b2", GEMINI_KEY, PATH_KEY, GEMINI_PATH_KEY, UNPARSED_PATH_KEY, STREAM_ECHO_TAIL,
           "PLANTEDPROMPT", "hunter2", "PLANTEDGENERATED"]


def test_provider_echoed_keys_and_request_text_are_nowhere_on_disk_in_the_log_or_reports(proxy, upstream):
    upstream.scenarios.update(ECHOES)
    client = httpx.Client(proxy=proxy.url)
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": PROMPT}]}
    for scenario in ECHOES:
        client.post(f"{upstream.base_url}/chat/completions", json=body,
                    headers={"x-scenario": scenario, "authorization": f"Bearer {OPENAI_KEY}"})
    assert client.post(f"{upstream.url}/v1/keys/{PATH_KEY}/chat/completions", json=body).status_code == 200
    client.post(f"{upstream.url}/v1/keys/{UNPARSED_PATH_KEY}/chat/completions", json={"model": "x"})  # no chat call
    with ProviderUpstream() as google:
        gemini = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        path = f"/gw/{GEMINI_PATH_KEY}/v1beta/models/gemini-2.0-flash:generateContent"
        assert client.post(f"{google.url}{path}", json=gemini).status_code == 200
    rows = {r["error_type"] or r["path"]: r for r in proxy.rows(len(ECHOES) + 2)}
    assert rows["invalid_api_key"]["error_message"].startswith("Incorrect API key provided: *** You can find")
    assert rows["INVALID_ARGUMENT"]["error_message"] == (
        "Request to /v1/chat/completions?key=***&alt=sse rejected: API key not valid")
    assert "input_value=…, input_type=dict" in rows["BadRequestError"]["error_message"]
    assert rows["authentication_error"]["error_message"] == "Incorrect API key provided: ***"
    assert rows["http_400"]["error_message"] == "error body is not a provider error object (78 bytes, text/plain)"
    assert rows["malformed_response"]["error_message"] == (
        f"response body is not JSON ({len(GENERATED) * 20} bytes, text/plain)")
    assert "/v1/keys/***/chat/completions" in rows
    assert "/gw/***/v1beta/models/gemini-2.0-flash:generateContent" in rows
    backup = make_backup(proxy.db_path)
    reports = [cli("reports", "--db", str(proxy.db_path), *args).stdout for args in (
        (), ("--format", "json"), ("--group-by", "path"), ("--group-by", "path", "--format", "json"),
        ("--group-by", "path", "--format", "csv"), ("--errors-only", "--format", "json"))]
    assert "invalid_api_key" in reports[1] and "/v1/keys/***/chat/completions" in reports[4]
    files = [*proxy.db_path.parent.glob("metrics.db*"), backup]
    proxy.stop()
    assert "looked like LLM calls but were not parsed" in proxy.log()  # names the path, redacted
    for needle in NEEDLES:
        for path in files:
            if path.exists():
                assert needle.encode() not in path.read_bytes(), (needle, path.name)
        assert needle not in proxy.log(), needle
        for report in reports:
            assert needle not in report, (needle, report)


# -- database URLs: the password is never shown ------------------------------------------------

ROLE = "lmp_metrics"
ROLE_PASSWORD = "PLANTED-pg-pw-7Qx9"


@dataclass
class ScramServer:
    """A PostgreSQL cluster of this test's own that asks every client for a password (scram-sha-256
    in its pg_hba.conf, from initdb --auth), so a connection that works had the password."""

    port: int

    def url(self, password: str | None = ROLE_PASSWORD, database: str = ROLE) -> str:
        userinfo = f"{ROLE}:{password}" if password else ROLE
        return f"postgresql://{userinfo}@127.0.0.1:{self.port}/{database}"


@pytest.fixture
def scram_server():
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("initdb and pg_ctl are needed to start a cluster that asks for passwords")
    as_owner: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: the cluster runs as the postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to own a test cluster")
        as_owner = ["runuser", "-u", "postgres", "--"]
    # Not under tmp_path: pytest makes that readable by root only, and the cluster's user must reach it.
    base = Path(tempfile.mkdtemp(prefix="lmp-scram-"))
    superuser_password = "superuser-pw-not-planted"
    (base / "pw").write_text(superuser_password)
    if as_owner:
        for path in (base, base / "pw"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    run = functools.partial(subprocess.run, check=True, capture_output=True, timeout=60)
    run([*as_owner, initdb, "-D", str(base / "data"), "-U", "postgres", "--auth=scram-sha-256",
         f"--pwfile={base / 'pw'}", "-N", "-E", "UTF8"])
    run([*as_owner, pg_ctl, "-D", str(base / "data"), "-l", str(base / "log"), "-w", "-t", "60",
         "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"])
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=superuser_password,
                             dbname="postgres", autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
            admin.execute(f"CREATE DATABASE {ROLE} OWNER {ROLE}")
        yield ScramServer(port)
    finally:
        subprocess.run([*as_owner, pg_ctl, "-D", str(base / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def cli(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m <module> …` as a user runs it, from the project's directory."""
    env = {k: v for k, v in (env or os.environ).items() if not k.lower().endswith("_proxy")}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def pg_count(url: str) -> int:
    db = open_database(url)
    try:
        return db.execute_sql("SELECT count(*) FROM completion_requests").fetchone()[0]
    finally:
        db.close()


def test_database_password_is_masked_in_the_proxy_log_reports_migrations_and_doctor(
        start_proxy, upstream, scram_server):
    url, shown = scram_server.url(), f"postgresql://{ROLE}:***@127.0.0.1:{scram_server.port}/{ROLE}"
    proxy = start_proxy("--set", f"llm_metrics_db={url}")
    assert f"recording LLM calls to {shown}" in proxy.log()
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{upstream.base_url}/chat/completions", json=body, proxy=proxy.url).status_code == 200
    deadline = time.monotonic() + 20
    while pg_count(url) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    outputs = {
        "doctor": cli("addon", "doctor", "--db", url, "--proxy", proxy.url, "--no-https"),
        "report": cli("reports", "--db", url),
        "report json": cli("reports", "--db", url, "--format", "json"),
        "report csv": cli("reports", "--db", url, "--format", "csv"),
        "migrations status": cli("migrations", "status", "--db", url),
    }
    assert outputs["doctor"].returncode == 0, outputs["doctor"].stdout  # it read the row with that password
    assert json.loads(outputs["report json"].stdout)["database"] == shown
    assert f"database {shown}: schema version" in outputs["migrations status"].stdout
    proxy.stop()
    assert "recorded in " + shown in proxy.log()  # the exit line
    outputs["proxy log"] = proxy.log()
    for name, output in outputs.items():
        text = output if isinstance(output, str) else output.stdout + output.stderr
        assert ROLE_PASSWORD not in text, name


@pytest.mark.parametrize(
    "problem", ["no such database", "wrong password", "unparsable URL", "server away"])
def test_database_password_is_masked_in_failure_messages(tmp_path, scram_server, problem):
    planted = "PLANTED-wrong-pw/x9Kq"
    url = {
        "no such database": scram_server.url(database="no_such_db"),
        "wrong password": scram_server.url(password=planted.replace("/", "")),
        "unparsable URL": scram_server.url(password=planted),  # "/" not percent-encoded
        "server away": f"postgresql://{ROLE}:{ROLE_PASSWORD}@127.0.0.1:{free_port()}/{ROLE}",
    }[problem]
    command = [str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", "0", "-s", str(ADDON),
               "--set", f"confdir={tmp_path / 'confdir'}", "--set", f"llm_metrics_db={url}"]
    if problem == "server away":  # the proxy starts all the same, rows waiting for the server: it says so
        proxy_log = _run_until(command, tmp_path, "the database server cannot be reached")
    else:
        started = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert started.returncode != 0 and "cannot use llm_metrics_db='postgresql://" in started.stdout
        proxy_log = started.stdout + started.stderr
    outputs = [cli("reports", "--db", url), cli("migrations", "status", "--db", url),
               cli("addon", "doctor", "--db", url, "--proxy", f"http://127.0.0.1:{free_port()}")]
    for secret in (ROLE_PASSWORD, planted, planted.replace("/", ""), "PLANTED-wrong-pw"):
        assert secret not in proxy_log and "Traceback" not in proxy_log, proxy_log
    for output in outputs:
        text = output.stdout + output.stderr
        assert output.returncode != 0 and "Traceback" not in text, text
        for secret in (ROLE_PASSWORD, planted, planted.replace("/", ""), "PLANTED-wrong-pw"):
            assert secret not in text, (output.args, text)
    for output in outputs[:2]:  # reports and migrations: one error line, the password masked in it
        assert output.stderr.startswith("error: ") and output.stderr.count("\n") == 1, output.stderr


def _run_until(command: list[str], cwd: Path, line: str, timeout: float = 30) -> str:
    """Runs mitmdump until its log has `line` (or `timeout` passes), stops it; its whole log."""
    log = cwd / "mitmdump.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            deadline = time.monotonic() + timeout
            while line not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(30)
    text = log.read_text()
    assert line in text, text
    return text


def test_password_from_pgpassword_or_a_pgpass_file_reaches_the_server(
        start_proxy, upstream, scram_server, tmp_path, monkeypatch):
    """libpq takes the password from PGPASSWORD or a pgpass file when the URL has none: nothing
    secret in the URL, the command line or the proxy's log."""
    url = scram_server.url(password=None)
    for name in ("PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass of the user running the tests
    with pytest.raises(peewee.OperationalError, match="password"):
        open_database(url).execute_sql("SELECT 1")  # the server does ask for it: the test is not vacuous
    monkeypatch.setenv("PGPASSWORD", ROLE_PASSWORD)
    assert open_database(url).execute_sql("SELECT 1").fetchone() == (1,)
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{scram_server.port}:{ROLE}:{ROLE}:{ROLE_PASSWORD}\n")
    pgpass.chmod(0o600)  # libpq ignores a pgpass file others can read
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    proxy = start_proxy("--set", f"llm_metrics_db={url}")
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{upstream.base_url}/chat/completions", json=body, proxy=proxy.url).status_code == 200
    report = cli("reports", "--db", url, "--format", "json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["overview"]["requests"] >= 0
    proxy.stop()
    assert pg_count(url) == 1
    assert ROLE_PASSWORD not in proxy.log()


# -- the origin tag never reaches the provider ----------------------------------------------------

TAG = "x-llm-metrics-origin"


@pytest.mark.parametrize(
    ("method", "path", "recorded"),
    [
        ("POST", "/v1/chat/completions", True),
        ("GET", "/v1/models", False),
        ("POST", "/v1/files", False),
        ("POST", "/v1/chat/completions/", False),  # a trailing slash: not an LLM API's path
        ("PUT", "/v1/chat/completions", False),
        ("DELETE", "/v1/chat/completions", False),
    ],
)
def test_origin_tag_is_removed_from_every_request_recorded_or_not(proxy, upstream, method, path, recorded):
    body = json.dumps({"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}).encode()
    response = httpx.request(method, f"{upstream.url}{path}", content=body, proxy=proxy.url,
                             headers={TAG: "billing-job", "content-type": "application/json"})
    assert response.status_code < 600
    served = upstream.last()
    assert (served.path, TAG in served.headers) == (path, False), served.headers
    assert "content-type" in served.headers  # only the tag was taken off
    if recorded:
        assert proxy.rows(1)[0]["origin"] == "billing-job"


def test_origin_tag_is_removed_inside_an_https_tunnel_and_with_a_custom_name(start_proxy, tls_upstream):
    proxy = start_proxy("--set", "ssl_insecure=true", "--set", "llm_metrics_origin_header=X-Team")
    client = httpx.Client(proxy=proxy.url, verify=str(proxy.ca_cert))
    assert client.get(f"{tls_upstream.url}/v1/models", headers={"x-team": "a", TAG: "b"}).status_code == 200
    served = tls_upstream.last()
    assert "x-team" not in served.headers
    assert served.headers[TAG] == "b"  # no longer the tag: passed on like any header


# -- URLs in mitmproxy's own output ----------------------------------------------------------------

QUERY_KEY_LONG = "AIzaSyPLANTEDflowDetailKEY0123456789a"


def _dev_run_args(*rest: str) -> list[str]:
    """What `python3 dev.py run …` executes: `llm-metrics-proxy …`, whose function this runs."""
    return [sys.executable, "-m", "addon.launch", *rest]


def _run_and_call(tmp_path: Path, name: str, args: list[str], upstream, google) -> str:
    """Starts `args` in a 400-column terminal's environment, sends calls with keys in their
    URLs and headers, stops it; its output."""
    log = tmp_path / f"{name}.log"
    env = {**{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}, "COLUMNS": "400"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    port = int(args[args.index("--listen-port") + 1])
    deadline = time.monotonic() + 30
    while "recording LLM calls" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)
    client = httpx.Client(proxy=f"http://127.0.0.1:{port}")
    gemini = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    path = "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    assert client.post(f"{google.url}{path}?alt=sse&key={QUERY_KEY_LONG}", json=gemini).status_code == 200
    assert client.get(f"{upstream.url}/v1/models?key={QUERY_KEY_LONG}").status_code == 200
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    client.post(f"{upstream.base_url}/chat/completions", json=body, headers={"authorization": f"Bearer {OPENAI_KEY}"})
    time.sleep(0.5)  # the per-call lines go out every 0.1 s
    proc.terminate()
    proc.wait(30)
    return log.read_text(errors="replace")


def test_readme_run_command_prints_no_key_from_urls_in_a_wide_terminal(tmp_path, upstream):
    common = ["--listen-port", str(free_port()), "--set", f"confdir={tmp_path / 'c'}",
              "--set", f"llm_metrics_db={tmp_path / 'm.db'}"]
    with ProviderUpstream() as google:
        run = _run_and_call(tmp_path, "dev-run", _dev_run_args(*common), upstream, google)
        common[1] = str(free_port())
        bare = _run_and_call(tmp_path, "bare", [str(MITMDUMP), "--listen-host", "127.0.0.1", "-s", str(ADDON),
                                                *common], upstream, google)
    # The addon's own line per LLM call is still printed.
    assert run.count("llm gemini-compatible ") == 1 and run.count("llm openai-compatible ") == 1, run
    assert QUERY_KEY_LONG not in run and OPENAI_KEY not in run, run
    # mitmdump on its own (flow_detail 1) prints the whole URL in a wide terminal: what the
    # command above avoids, and what the addon then warns of.
    assert QUERY_KEY_LONG in bare
    assert "mitmproxy prints each request's URL whole, a key in its query (?key=) included (flow_detail=1)" in bare


@pytest.mark.parametrize("command", [("reports",), ("migrations", "status")])
def test_a_database_url_typed_without_db_is_refused_without_its_password(command):
    """argparse quotes what it did not understand: a URL given as a positional argument."""
    result = cli(*command, "postgresql://metrics:PLANTED-typed-pw@db.internal/llm")
    assert result.returncode == 2
    assert result.stderr == "error: unrecognized arguments: postgresql://metrics:***@db.internal/llm\n"
