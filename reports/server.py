"""`python -m reports --serve`: the dashboard page and the JSON API (`reports.api`), served by the
standard library's ThreadingHTTPServer. Read-only: each request opens the database read-only
(`reports.source.read`) and closes it, so it is safe while the proxy runs and never migrates it.

Loopback by default. The page and the API answer only requests addressed to a loopback name
(the Host header), so a web page elsewhere cannot reach them through DNS rebinding; with
--allow-remote, any address and name.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sqlite3
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from urllib.parse import parse_qs, urlsplit

import peewee

from storage.db import display_location, hide_password

from . import fmt
from .api import ENDPOINTS, BadRequest, Reply
from .source import ReportError

MAX_CONCURRENT_READS = 4  # requests reading the database at once; the others wait their turn
REQUEST_TIMEOUT_S = 30  # a client that sends nothing for this long is dropped

# The page's own files (reports/web), and nothing else: no path is looked up on disk.
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
# Only this page's own script and style; no inline script, no other origin, not framed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) means this machine only."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True  # a request in progress never holds up Ctrl-C
    allow_reuse_address = True

    def __init__(self, location: str, host: str, port: int, *, allow_remote: bool = False) -> None:
        self.location = location
        self.allow_remote = allow_remote
        self.reads = threading.BoundedSemaphore(MAX_CONCURRENT_READS)
        self.static = {path: (files("reports").joinpath("web", name).read_bytes(), kind) for path, (name, kind) in STATIC.items()}
        if ":" in host.strip("[]"):
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "llm-metrics-proxy"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S
    _head_only = False

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _refuse_method(self) -> None:
        self._json(Reply(405, {"error": f"{self.command} is not served: the API is read-only (GET)"}, {"Allow": "GET, HEAD"}))

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _refuse_method

    def _answer(self, head: bool) -> None:
        self._head_only = head
        url = urlsplit(self.path)
        if not self.server.allow_remote and not is_loopback(_host_name(self.headers.get("Host", ""))):
            self._json(Reply(403, {"error": "this server answers requests to a loopback name only (start it with --allow-remote)"}))
        elif url.path in self.server.static:
            body, kind = self.server.static[url.path]
            self._send(200, body, kind, {"Cache-Control": "no-cache"})
        elif url.path in ENDPOINTS:
            self._json(self._call(url.path, url.query))
        else:
            self._json(Reply(404, {"error": f"no such path: {fmt.one_line(url.path)[:200]}; see docs/api.md"}))

    def _call(self, path: str, query_text: str) -> Reply:
        try:
            query = parse_qs(query_text, keep_blank_values=True, strict_parsing=False, max_num_fields=2_000)
        except ValueError as exc:
            return Reply(400, {"error": fmt.one_line(str(exc))})
        location = self.server.location
        try:
            with self.server.reads:
                return ENDPOINTS[path](location, query)
        except BadRequest as exc:
            return Reply(400, {"error": fmt.one_line(str(exc))})
        except ReportError as exc:
            return Reply(503, {"error": fmt.one_line(hide_password(str(exc), location))})
        except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:  # as the CLI says it (`reports.cli.make_report`)
            return Reply(503, {"error": fmt.one_line(f"cannot read {display_location(location)}: {hide_password(str(exc), location)}")})
        except Exception as exc:  # a bug: say so in one line here, the traceback in the server's log
            print(hide_password(traceback.format_exc(), location), file=sys.stderr, flush=True)
            return Reply(500, {"error": f"internal error ({type(exc).__name__}); the server's log has the details"})

    def _json(self, reply: Reply) -> None:
        try:
            body = json.dumps(reply.body, allow_nan=False, ensure_ascii=False).encode()
        except ValueError:  # a value JSON cannot carry (NaN): never an invalid document
            reply, body = Reply(500, {}), b'{"error": "internal error: a value JSON cannot carry"}'
        self._send(reply.status, body, "application/json; charset=utf-8", {"Cache-Control": "no-store", **reply.headers})

    def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not self._head_only:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the standard library's name)
        # The request line only (the query holds filters, never a secret), printable.
        sys.stderr.write(fmt.printable(f"{self.address_string()} {format % args}") + "\n")


def _host_name(header: str) -> str:
    """The name in a Host header, without its port (`[::1]:8321` -> `::1`)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def serve(location: str, host: str, port: int, *, allow_remote: bool = False) -> int:
    """Serves until Ctrl-C. A host that is not loopback without `allow_remote` is refused: every
    call's model, origin, tokens and cost would be open to whoever reaches it."""
    if not allow_remote and not is_loopback(host):
        print(f"error: --bind {fmt.printable(host)} is not a loopback address: anyone who can reach it could read every "
              "recorded call's model, origin, tokens and cost; add --allow-remote to serve it anyway", file=sys.stderr)
        return 2
    if allow_remote and not is_loopback(host):
        print(f"warning: serving on {fmt.printable(host)}, not only this machine: anyone who reaches it reads every "
              "recorded call's model, origin, tokens and cost (no login, no TLS)", file=sys.stderr, flush=True)
    try:
        server = DashboardServer(location, host, port, allow_remote=allow_remote)
    except OSError as exc:
        print(f"error: cannot listen on {fmt.printable(host)}:{port}: {fmt.one_line(exc.strerror or str(exc))}", file=sys.stderr)
        return 2
    print(f"serving {server.url} · {fmt.printable(display_location(location))}, read-only · Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0

