"""`python -m addon doctor` against real proxies: running, stopped, without the addon, writing
elsewhere, on a database it cannot write; and bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from addon.doctor import DOCTOR_MODEL, EchoEndpoint, parse_proxy, proxy_from_environment, writable_problem
from migrations import upgrade
from storage import enable_wal, open_database
from tests.conftest import MITMDUMP, free_port, read_rows
from tests.test_newcomer_env import addon_cli, bash_applied, clean_env, printed_env

pytestmark = pytest.mark.e2e


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return addon_cli("doctor", *args, env=env)


def trusting_env(proxy) -> dict[str, str]:
    """A shell that applied `python -m addon env --mode forward` for this proxy."""
    return bash_applied(printed_env("--mode", "forward", "--confdir", str(proxy.confdir), "--port", str(proxy.port)))


def check_line(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line.split()[1:2] == [name])


def test_running_proxy_with_trusted_ca_is_captured_and_stored(proxy):
    result = doctor("--db", str(proxy.db_path), env=trusting_env(proxy))  # the proxy comes from $HTTPS_PROXY
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.splitlines()[0] == (f"llm-metrics doctor: proxy http://127.0.0.1:{proxy.port} (from $HTTPS_PROXY), "
                                   f"database {proxy.db_path}")
    for name in ("proxy", "captured", "stored", "https"):
        assert check_line(out, name).split()[0] == "ok", out
    assert "provider openai-compatible, host 127.0.0.1, status 200" in check_line(out, "stored")
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"):
        assert check_line(out, name).endswith("holds the CA that signed the proxy's certificate"), out
    assert out.splitlines()[-1] == "result: captured and stored"
    [row] = read_rows(proxy.db_path)
    assert (row["request_model"], row["model"], row["origin"]) == (DOCTOR_MODEL, DOCTOR_MODEL, DOCTOR_MODEL)
    assert (row["prompt_tokens"], row["completion_tokens"], row["success"]) == (5, 1, 1)


def test_second_run_finds_its_own_new_row(proxy):
    env = trusting_env(proxy)
    assert doctor("--db", str(proxy.db_path), env=env).returncode == 0
    second = doctor("--db", str(proxy.db_path), env=env)
    assert second.returncode == 0 and "row 2:" in check_line(second.stdout, "stored")


def test_running_proxy_with_untrusted_ca_says_ca_not_trusted(proxy):
    result = doctor("--proxy", proxy.url, "--db", str(proxy.db_path))
    assert result.returncode == 1
    line = check_line(result.stdout, "https")
    assert line.split()[0] == "FAIL" and "Python does not trust the proxy's certificate" in line
    assert "python -m addon env --mode forward" in line
    assert check_line(result.stdout, "SSL_CERT_FILE").endswith("not set")
    assert result.stdout.splitlines()[-1] == ("result: captured and stored over HTTP, but HTTPS calls through the "
                                              "proxy fail: CA not trusted")


def test_no_https_skips_the_ca_check(proxy):
    result = doctor("--proxy", proxy.url, "--db", str(proxy.db_path), "--no-https")
    assert result.returncode == 0
    assert "https" not in [line.split()[1] for line in result.stdout.splitlines()[1:-1]]
    assert result.stdout.splitlines()[-1] == "result: captured and stored (HTTPS not checked)"


def test_stopped_proxy_says_the_proxy_is_not_running(proxy):
    proxy.stop()
    result = doctor("--proxy", proxy.url, "--db", str(proxy.db_path))
    assert result.returncode == 1
    line = check_line(result.stdout, "proxy")
    assert line.split()[0] == "FAIL"
    assert f"nothing accepts connections at 127.0.0.1:{proxy.port}" in line and "python3 dev.py run" in line
    assert check_line(result.stdout, "database").endswith(f"{proxy.db_path} exists, writable")
    assert result.stdout.splitlines()[-1] == "result: not captured: the proxy is not running"


def test_proxy_writing_to_another_database_says_so(proxy, tmp_path):
    elsewhere = tmp_path / "elsewhere.db"
    result = doctor("--proxy", proxy.url, "--db", str(elsewhere), "--wait", "1", "--no-https")
    assert result.returncode == 1
    assert check_line(result.stdout, "captured").split()[0] == "ok"
    line = check_line(result.stdout, "stored")
    assert line.split()[0] == "FAIL" and f"{elsewhere} does not exist" in line and "pass that with --db" in line
    assert result.stdout.splitlines()[-1] == "result: captured, not stored: the row is not in this database"
    assert read_rows(proxy.db_path)[0]["request_model"] == DOCTOR_MODEL  # it went to the proxy's own


@contextmanager
def unwritable(path: Path):
    """The file cannot be written by this user: read-only mode, or for root (whom modes do not
    stop) the immutable attribute."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i does not work: cannot make a file unwritable")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_database_that_is_not_writable_says_so(start_proxy, tmp_path):
    db_path = tmp_path / "readonly.db"
    db = open_database(str(db_path), wal=False)
    upgrade(db)
    enable_wal(db)
    db.close()
    with unwritable(db_path):
        proxy = start_proxy("--set", f"llm_metrics_db={db_path}")
        try:
            result = doctor("--proxy", proxy.url, "--db", str(db_path), "--wait", "1")
        finally:
            proxy.stop(signal.SIGKILL)  # its writer would retry the row for 10 s at shutdown
    assert result.returncode == 1
    assert check_line(result.stdout, "captured").split()[0] == "ok"
    line = check_line(result.stdout, "stored")
    assert line.split()[0] == "FAIL"
    assert "the database is not writable: attempt to write a readonly database" in line
    assert result.stdout.splitlines()[-1] == "result: captured, not stored: the database is not writable"


def test_proxy_without_the_addon_says_the_call_was_not_recognised(tmp_path):
    port = free_port()
    plain = subprocess.Popen([str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", str(port),
                              "--set", f"confdir={tmp_path / 'confdir'}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=clean_env())
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        result = doctor("--proxy", f"127.0.0.1:{port}", "--db", str(tmp_path / "m.db"), "--wait", "0")
    finally:
        plain.send_signal(signal.SIGTERM)
        plain.wait(15)
    assert result.returncode == 1
    line = check_line(result.stdout, "captured")
    assert line.split()[0] == "FAIL" and "tag still on: no llm-metrics addon recognised it" in line
    assert result.stdout.splitlines()[-1] == "result: not captured: the proxy did not recognise the call as an LLM call"


def test_reverse_mode_listener_says_the_call_did_not_reach_the_endpoint(start_proxy, upstream):
    proxy = start_proxy("--mode", f"reverse:http://127.0.0.1:{upstream.port}")  # e.g. a local vLLM
    result = doctor("--proxy", proxy.url, "--db", str(proxy.db_path), "--wait", "0")
    assert result.returncode == 1
    line = check_line(result.stdout, "captured")
    assert line.split()[0] == "FAIL"
    assert "the proxy answered HTTP 200 (" in line and "without reaching doctor's endpoint" in line
    assert "a reverse-mode listener sends every call to its one upstream" in line
    assert upstream.last().body["model"] == DOCTOR_MODEL  # it went there instead


@pytest.mark.parametrize(("args", "message"), [
    (["--proxy", "https://127.0.0.1:8080"], "error: --proxy must look like http://HOST:PORT"),
    (["--proxy", "socks5://127.0.0.1:1080"], "error: --proxy must look like http://HOST:PORT"),
    (["--proxy", "http://127.0.0.1"], "error: --proxy must look like http://HOST:PORT"),
    (["--proxy", "http://127.0.0.1:99999"], "error: --proxy must look like http://HOST:PORT"),
    (["--wait", "-1"], "error: --wait must be 0 or more"),
    (["--db", "mysqlx://nowhere/db"], "error: --db mysqlx://nowhere/db:"),
])
def test_bad_input_is_one_error_line_and_exit_2(args, message):
    result = doctor(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message), result.stderr


def test_a_db_that_is_not_sqlite_is_bad_input_and_left_alone(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    result = doctor("--proxy", "http://127.0.0.1:1", "--db", str(notes))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "not a SQLite database" in result.stderr
    assert notes.read_text() == "my notes"


# -- pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8080", ("127.0.0.1", 8080)), ("127.0.0.1:9000", ("127.0.0.1", 9000)),
    ("http://proxy.internal:3128/", ("proxy.internal", 3128)),
])
def test_proxy_urls_are_parsed(url, expected):
    assert parse_proxy(url) == expected


def test_proxy_defaults_to_the_environments_then_8080():
    assert proxy_from_environment({"HTTPS_PROXY": "http://a:1", "HTTP_PROXY": "http://b:2"}) == ("http://a:1", "from $HTTPS_PROXY")
    assert proxy_from_environment({"http_proxy": "http://b:2"}) == ("http://b:2", "from $http_proxy")
    assert proxy_from_environment({}) == ("http://127.0.0.1:8080", "the default")


def test_writable_problem_for_a_path_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "cannot be created" in writable_problem(str(blocker / "sub" / "metrics.db"))
    assert writable_problem(str(tmp_path / "new" / "metrics.db")) is None


def test_writable_problem_for_a_locked_database(tmp_path):
    import sqlite3

    path = tmp_path / "m.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert writable_problem(str(path)) == "database is locked"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert writable_problem(str(path)) is None
    assert [r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")] == ["t"]  # probe left nothing


def test_echo_endpoint_answers_an_openai_shaped_completion():
    import json
    import urllib.request

    with EchoEndpoint() as endpoint:
        request = urllib.request.Request(f"http://127.0.0.1:{endpoint.port}/v1/chat/completions", b"{}",
                                         {"x-llm-metrics-origin": "t"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        reply = json.load(opener.open(request))
    assert reply["object"] == "chat.completion" and reply["usage"]["total_tokens"] == 6
    assert [(r.path, r.tag) for r in endpoint.received] == [("/v1/chat/completions", "t")]
