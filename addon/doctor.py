"""`python -m addon doctor`: one test call through a running proxy, and what became of it.

Doctor starts its own OpenAI-shaped chat completion endpoint on 127.0.0.1, sends one call to it
through the proxy (explicitly, whatever HTTP(S)_PROXY and NO_PROXY say), then looks for the row
in the database. Each step that can fail says why:

- proxy not running: nothing accepts connections at the proxy's address;
- not recognised: the call reached the endpoint with its `x-llm-metrics-origin` tag still on,
  so no llm-metrics addon looked at it (the addon removes the tag from every request);
- not stored: the addon took the call but no row appeared: the database is not writable, or
  the proxy writes to another database;
- CA not trusted: a TLS handshake through the proxy (as an HTTPS client would make it, with
  this environment's SSL_CERT_FILE) fails verification.

The test call is recorded like any other, as model `llm-metrics-doctor`.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit

import peewee

from storage.db import NotSQLiteError, check_sqlite_header, connect_server, display_location, hide_password, sqlite_path
from storage.models import CompletionRequest

DOCTOR_MODEL = "llm-metrics-doctor"
TAG_HEADER = "x-llm-metrics-origin"
DEFAULT_PROXY = "http://127.0.0.1:8080"
PROXY_ENV_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
CA_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")
CONNECT_TIMEOUT_S = 3.0
CALL_TIMEOUT_S = 15.0


class DoctorInputError(ValueError):
    """Bad input to `doctor`: reported as one `error:` line, exit 2."""


# -- the local endpoint ------------------------------------------------------------------


@dataclass
class Received:
    path: str
    tag: str | None  # the origin tag header as it arrived; None when the proxy removed it


class EchoEndpoint:
    """An OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 that answers every POST with a
    small completion and remembers what arrived."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _echo_handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> EchoEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _echo_handler(endpoint: EchoEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # doctor prints its own report only
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            endpoint.received.append(Received(self.path, self.headers.get(TAG_HEADER)))
            body = json.dumps(_completion()).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-llm-metrics-doctor",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": DOCTOR_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


# -- the checks --------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool | None  # None: information only
    detail: str


@dataclass
class Report:
    proxy: str
    proxy_source: str
    db: str
    checks: list[Check] = field(default_factory=list)
    verdict: str = ""

    @property
    def exit_code(self) -> int:
        return 0 if all(c.ok is not False for c in self.checks) else 1

    def add(self, name: str, ok: bool | None, detail: str) -> bool | None:
        self.checks.append(Check(name, ok, detail))
        return ok

    def lines(self) -> list[str]:
        out = [f"llm-metrics doctor: proxy {display_location(self.proxy)} ({self.proxy_source}), "
               f"database {display_location(self.db)}"]
        for c in self.checks:
            mark = "info" if c.ok is None else ("ok" if c.ok else "FAIL")
            out.append(f"  {mark:<4}  {c.name:<9} {c.detail}")
        out.append(self.verdict)
        return out


def parse_proxy(url: str) -> tuple[str, int]:
    """Host and port of a forward proxy given as http://HOST:PORT (or HOST:PORT)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise DoctorInputError(f"--proxy must look like http://HOST:PORT (got {display_location(url)!r})")
    return parts.hostname, port


def proxy_from_environment(environ: dict[str, str]) -> tuple[str, str]:
    """The proxy an app in this environment would use, and where that came from."""
    for name in PROXY_ENV_VARS:
        if environ.get(name):
            return environ[name], f"from ${name}"
    return DEFAULT_PROXY, "the default"


def run(proxy: str, proxy_source: str, db: str, *, wait_s: float = 5.0, https: bool = True,
        environ: dict[str, str] | None = None) -> Report:
    environ = dict(os.environ) if environ is None else environ
    host, port = parse_proxy(proxy)
    reader = RowReader(db)  # raises DoctorInputError for a file that is not a metrics database
    report = Report(proxy, proxy_source, db)
    try:
        with EchoEndpoint() as endpoint:
            _diagnose(report, host, port, endpoint, reader, wait_s=wait_s)
            if https and report.exit_code == 0:
                _check_https(report, host, port, endpoint.port, environ)
    finally:
        reader.close()
    if not report.verdict:
        report.verdict = "result: captured and stored" + ("" if https else " (HTTPS not checked)")
    return report


def _diagnose(report: Report, host: str, port: int, endpoint: EchoEndpoint, reader: RowReader,
              *, wait_s: float) -> None:
    before = reader.last_doctor_id()
    if not report.add("proxy", *_proxy_listening(host, port)):
        report.add("database", None, database_state(report.db))
        report.verdict = "result: not captured: the proxy is not running"
        return
    answer = _send_call(host, port, endpoint)
    arrived = endpoint.received[-1] if endpoint.received else None
    if arrived is None:
        report.add("captured", False,
                   f"{answer} without reaching doctor's endpoint at 127.0.0.1:{endpoint.port}: a proxy on "
                   "another machine or in a container cannot reach it, and a reverse-mode listener sends "
                   "every call to its one upstream (doctor checks a forward proxy)")
        report.verdict = "result: not captured: the call did not reach doctor's endpoint through the proxy"
        return
    recognised = arrived.tag is None
    row = reader.wait_for_row(before, wait_s if recognised else 0.5)
    if not recognised and row is None:
        report.add("captured", False,
                   f"the call reached doctor's endpoint with its {TAG_HEADER} tag still on: no llm-metrics "
                   "addon recognised it. Is the proxy running the addon (python3 dev.py run, or "
                   "mitmdump -s addon/llm_metrics.py)?")
        report.verdict = "result: not captured: the proxy did not recognise the call as an LLM call"
        return
    report.add("captured", True,
               f"the proxy recognised the test chat completion to 127.0.0.1:{endpoint.port}{arrived.path}")
    _stored(report, row, wait_s)


def _stored(report: Report, row: dict[str, Any] | None, wait_s: float) -> None:
    if row is not None:
        report.add("stored", True, f"row {row['id']}: provider {row['provider']}, host {row['host']}, "
                                   f"status {row['status_code']}, {row['response_time_ms']} ms")
        return
    problem = writable_problem(report.db)
    if problem:
        report.add("stored", False, f"no row after {wait_s:g} s, and the database is not writable: {problem}")
        report.verdict = "result: captured, not stored: the database is not writable"
        return
    report.add("stored", False,
               f"no row after {wait_s:g} s; {database_state(report.db)}. The proxy writes to another "
               "database (its output's 'recording LLM calls to ...' line names it: pass that with "
               "--db), or cannot write and says why in its output")
    report.verdict = "result: captured, not stored: the row is not in this database"


def _proxy_listening(host: str, port: int) -> tuple[bool, str]:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return False, (f"nothing accepts connections at {host}:{port} ({reason}): start the proxy "
                       "(python3 dev.py run) or pass --proxy")
    return True, f"accepting connections at {host}:{port}"


def _send_call(host: str, port: int, endpoint: EchoEndpoint) -> str:
    """Sends the test call in absolute form straight to the proxy; says what came back."""
    target = f"127.0.0.1:{endpoint.port}"
    body = json.dumps({"model": DOCTOR_MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1})
    headers = {"Host": target, "Content-Type": "application/json", "User-Agent": "llm-metrics-doctor",
               TAG_HEADER: DOCTOR_MODEL}
    conn = http.client.HTTPConnection(host, port, timeout=CALL_TIMEOUT_S)
    try:
        conn.request("POST", f"http://{target}/v1/chat/completions", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"the proxy did not answer the test call ({exc or type(exc).__name__})"
    finally:
        conn.close()
    return f"the proxy answered HTTP {response.status} ({response.headers.get('server') or 'no Server header'})"


# -- HTTPS ------------------------------------------------------------------------------


def _check_https(report: Report, host: str, port: int, target_port: int, environ: dict[str, str]) -> None:
    """A TLS handshake through the proxy with Python's default trust, as an HTTPS client makes it."""
    try:
        with _tunnel(host, port, target_port) as sock:
            with ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1"):
                pass
    except ssl.SSLCertVerificationError as exc:
        trusted = environ.get("SSL_CERT_FILE") or "Python's default CA list"
        report.add("https", False,
                   f"Python does not trust the proxy's certificate ({exc.verify_message}; trusting {trusted}): "
                   "set SSL_CERT_FILE and friends to the proxy's CA, as printed by "
                   "`python -m addon env --mode forward`")
        report.verdict = "result: captured and stored over HTTP, but HTTPS calls through the proxy fail: CA not trusted"
    except (OSError, ConnectionError) as exc:
        report.add("https", False, f"could not make a TLS handshake through the proxy: {exc}")
        report.verdict = "result: captured and stored over HTTP; HTTPS through the proxy could not be checked"
    else:
        report.add("https", True, "Python trusts the proxy's certificate"
                   + (f" (SSL_CERT_FILE={environ['SSL_CERT_FILE']})" if environ.get("SSL_CERT_FILE") else ""))
    issuer = _proxy_issuer_check(host, port, target_port)
    for name in CA_ENV_VARS:
        report.add(name, None, _bundle_state(environ.get(name), issuer))


@contextmanager
def _tunnel(host: str, port: int, target_port: int) -> Iterator[socket.socket]:
    """A CONNECT tunnel through the proxy to 127.0.0.1:target_port."""
    target = f"127.0.0.1:{target_port}"
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 200" not in status:
            raise ConnectionError(f"the proxy refused CONNECT ({status or 'no answer'})")
        yield sock


def _proxy_issuer_check(host: str, port: int, target_port: int):
    """A function telling whether a PEM bundle holds the CA that signed the proxy's certificate."""
    try:
        from cryptography import x509

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with _tunnel(host, port, target_port) as sock, context.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
            if der is None:  # no certificate to compare (load_der_x509_certificate would raise)
                return None
            leaf = x509.load_der_x509_certificate(der)
    except Exception:
        return None

    def signed_by_one_of(pem: bytes) -> bool:
        for ca in x509.load_pem_x509_certificates(pem):
            try:
                leaf.verify_directly_issued_by(ca)
                return True
            except Exception:
                continue
        return False

    return signed_by_one_of


def _bundle_state(value: str | None, issuer) -> str:
    if not value:
        return "not set"
    path = Path(value).expanduser()
    if not path.is_file():
        return f"{value}: no such file"
    if issuer is None:
        return f"{value} (could not read the proxy's certificate to compare)"
    try:
        holds = issuer(path.read_bytes())
    except (OSError, ValueError) as exc:
        return f"{value}: unreadable as PEM certificates ({exc})"
    return f"{value}: {'holds' if holds else 'does NOT hold'} the CA that signed the proxy's certificate"


# -- the database ------------------------------------------------------------------------


class RowReader:
    """Reads the database the way reports do: a SQLite file read-only, anything else by URL."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.path = sqlite_path(location)
        self.db: peewee.Database | None = None
        if self.path is not None and self.path.is_file():
            try:
                check_sqlite_header(self.path)
            except NotSQLiteError as exc:
                raise DoctorInputError(str(exc)) from None
        elif self.path is not None and self.path.exists():
            raise DoctorInputError(f"--db {location} is not a file")
        elif self.path is None:
            try:
                self.db = connect_server(location)
            except (ValueError, RuntimeError) as exc:  # unknown scheme, driver missing
                raise DoctorInputError(f"--db {display_location(location)}: {hide_password(str(exc), location)}") from None

    def _open(self) -> peewee.Database | None:
        if self.db is None and self.path is not None and self.path.is_file():
            self.db = peewee.SqliteDatabase(f"file:{quote(str(self.path))}?mode=ro", uri=True, timeout=2)
        return self.db

    def _doctor_rows(self, after_id: int) -> list[dict[str, Any]]:
        db = self._open()
        if db is None:
            return []
        try:
            with db.bind_ctx([CompletionRequest]):
                if not CompletionRequest.table_exists():
                    return []
                c = CompletionRequest  # only columns every schema version has
                query = (c.select(c.id, c.provider, c.host, c.status_code, c.response_time_ms)
                         .where(c.request_model == DOCTOR_MODEL, c.id > after_id)
                         .order_by(c.id.desc()).limit(1).dicts())
                # .dicts() rows; peewee's stubs type .dicts() as returning the model query unchanged.
                return cast("list[dict[str, Any]]", list(query))
        except peewee.DatabaseError:
            return []

    def last_doctor_id(self) -> int:
        rows = self._doctor_rows(-1)
        return rows[0]["id"] if rows else 0

    def wait_for_row(self, after_id: int, wait_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + wait_s
        while True:
            rows = self._doctor_rows(after_id)
            if rows or time.monotonic() >= deadline:
                return rows[0] if rows else None
            time.sleep(0.1)

    def close(self) -> None:
        if self.db is not None and not self.db.is_closed():
            self.db.close()


def database_state(location: str) -> str:
    path = sqlite_path(location)
    if path is None:
        return "a database server: not probed"
    if not path.exists():
        return f"{path} does not exist (the proxy creates it when it starts)"
    problem = writable_problem(location)
    return f"{path} exists, " + (f"NOT writable: {problem}" if problem else "writable")


def writable_problem(location: str) -> str | None:
    """Why this user cannot write the SQLite database (a write inside a transaction that is
    rolled back), or None. Server databases are not probed."""
    path = sqlite_path(location)
    if path is None:
        return None
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            return f"{path} cannot be created ({parent} is not a writable directory)"
        return None
    try:
        con = sqlite3.connect(str(path), timeout=1, isolation_level=None)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("CREATE TABLE llm_metrics_doctor_probe (x)")
        con.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        con.close()
    return None
