"""A fake OpenAI-compatible upstream for end-to-end tests, on 127.0.0.1, plain HTTP or TLS.

A test picks the behaviour of each request with the `x-scenario` header (the SDKs send it via
`extra_headers`); a scenario is a plain object the test builds. The server records when it sent
the first content chunk, so tests can compare recorded time to first token with the truth.

`LocalServer` and `UpstreamHandler` are the plumbing it shares with `tests.provider_upstream`.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self


@dataclass
class Scenario:
    """What the upstream answers. Delays are seconds; `words` become one content chunk each."""

    status: int = 200
    model: str = "gpt-fake-2026-01-01"
    words: tuple[str, ...] = ("Hello", " from", " the", " fake", " upstream", ".")
    prompt_tokens: int = 11
    completion_tokens: int = 6
    cached_tokens: int = 3
    reasoning_tokens: int = 0
    finish_reason: str = "stop"
    first_token_delay: float = 0.0  # after the role-only first chunk
    chunk_delay: float = 0.0  # between later content chunks
    error_body: bytes | None = None  # sent as-is with `status` when set
    error_content_type: str = "application/json"
    reset_after_chunks: int | None = None  # send a TCP RST after this many content chunks
    end_delay: float = 0.0  # after `data: [DONE]`, before the body's terminating chunk
    response_delay: float = 0.0  # before a non-streamed completion's response
    content_encoding: str | None = None  # gzip, br or zstd: the stream is compressed, flushed per event
    extra_headers: dict[str, str] = field(default_factory=dict)
    refuse_stream_options: bool = False  # answer 400 to a body with stream_options, as Mistral or old Azure
    server: str | None = None  # the Server header (default: Python's BaseHTTP/…)


@dataclass
class Served:
    """What one request looked like from the upstream's side."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None  # None: not a JSON object (answered 400, as OpenAI does)
    received_at: float  # perf_counter
    first_content_at: float | None = None
    raw: bytes = b""  # the body as it arrived, byte for byte

    def content_sent(self) -> None:
        """Called after each piece of generated content: the first one is the truth for TTFT."""
        if self.first_content_at is None:
            self.first_content_at = time.perf_counter()


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # the default backlog of 5 refuses connections under load tests
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up mid-response (a test's purpose, often) are not errors here."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class LocalServer:
    """A threaded HTTP server on a free port of 127.0.0.1 (TLS with a throwaway certificate when
    given `tls_dir`), serving from a background thread inside `with`; `served` lists the requests."""

    served: list[Served]

    def _listen(self, handler: type[BaseHTTPRequestHandler], tls_dir: Path | None = None) -> None:
        self._server = _Server(("127.0.0.1", 0), handler)
        self.scheme = "http"
        if tls_dir is not None:
            cert, key = _self_signed(tls_dir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def last(self) -> Served:
        return self.served[-1]


class UpstreamHandler(BaseHTTPRequestHandler):
    """Reading and recording a JSON request; writing a whole body, or a chunked one compressed
    (`gzip`, `br`, `zstd`) and flushed chunk by chunk, so each arrives decodable on its own."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _receive(self, upstream: LocalServer) -> Served:
        received = time.perf_counter()
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:  # a multipart upload, or a compressed body (never decompressed here)
            body = None
        served = Served(self.path, {k.lower(): v for k, v in self.headers.items()},
                        body if isinstance(body, dict) else None, received, raw=raw)
        upstream.served.append(served)
        return served

    def _send_whole(self, status: int, content_type: str, payload: bytes,
                    headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _start_chunked(self, status: int, content_type: str, encoding: str | None = None,
                       headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self._compress = _flushing_compressor(encoding)
        if encoding:
            self.send_header("content-encoding", encoding)
        self.end_headers()

    def _chunk(self, data: bytes, raw: bool = False) -> None:
        if not raw:
            data = self._compress(data)
        if not data and not raw:
            return
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_chunked(self) -> None:
        tail = self._compress(b"", final=True)
        if tail:
            self._chunk(tail, raw=True)
        self._chunk(b"", raw=True)  # the terminating zero-length chunk


# OpenAI's answer to a body it cannot parse.
PARSE_ERROR = (b'{"error": {"message": "We could not parse the JSON body of your request.", '
               b'"type": "invalid_request_error", "param": null, "code": null}}')


# What a server that rejects unknown fields answers (Azure's words, before api-version 2024-09-01).
UNKNOWN_STREAM_OPTIONS = (b'{"error": {"message": "Unknown parameter: \'stream_options\'.", "type": '
                          b'"invalid_request_error", "param": "stream_options", "code": "unknown_parameter"}}')


class FakeUpstream(LocalServer):
    def __init__(self, tls_dir: Path | None = None) -> None:
        self.scenarios: dict[str, Scenario] = {"default": Scenario()}
        self.served: list[Served] = []
        self.models_owner: str | None = None  # GET …/models names this owner (vLLM: "vllm")
        self._listen(_handler_for(self), tls_dir)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def _handler_for(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(UpstreamHandler):
        def do_GET(self) -> None:
            """Any other method (GET /v1/models, PUT, DELETE): recorded, answered with an empty list."""
            self._receive(upstream)
            models = [{"id": "gpt-fake", "object": "model", "owned_by": upstream.models_owner}] if upstream.models_owner else []
            self._send_whole(200, "application/json", json.dumps({"object": "list", "data": models}).encode())

        do_PUT = do_DELETE = do_PATCH = do_GET

        def do_POST(self) -> None:
            served = self._receive(upstream)
            body = served.body
            sc = upstream.scenarios[self.headers.get("x-scenario", "default")]
            # Per request: a kept-alive connection is one handler for every request on it.
            self.server_version, self.sys_version = (sc.server, "") if sc.server else (
                type(self).server_version, type(self).sys_version)
            if not self.path.split("?")[0].endswith("/completions"):
                self._send_whole(501, "text/plain", b"not an LLM endpoint", sc.extra_headers)
            elif body is None:
                self._send_whole(400, "application/json", PARSE_ERROR, sc.extra_headers)
            elif sc.refuse_stream_options and "stream_options" in body:
                self._send_whole(400, "application/json", UNKNOWN_STREAM_OPTIONS)
            elif sc.error_body is not None:
                self._send_whole(sc.status, sc.error_content_type, sc.error_body, sc.extra_headers)
            elif body.get("stream"):
                self._stream(sc, body, served)
            else:
                time.sleep(sc.response_delay)
                self._send_whole(sc.status, "application/json", json.dumps(_completion(sc, body)).encode(),
                                 sc.extra_headers)

        def _stream(self, sc: Scenario, body: dict[str, Any], served: Served) -> None:
            self._start_chunked(sc.status, "text/event-stream; charset=utf-8", sc.content_encoding,
                                {"cache-control": "no-cache", **sc.extra_headers})
            base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": sc.model}
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            null_usage = {"usage": None} if include_usage else {}
            self._event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], **null_usage})
            time.sleep(sc.first_token_delay)
            for i, word in enumerate(sc.words):
                if i and sc.chunk_delay:
                    time.sleep(sc.chunk_delay)
                if sc.reset_after_chunks is not None and i == sc.reset_after_chunks:
                    self._reset()
                    return
                self._event({**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}], **null_usage})
                served.content_sent()
            self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": sc.finish_reason}], **null_usage})
            if include_usage:
                self._event({**base, "choices": [], "usage": _usage(sc)})
            self._chunk(b"data: [DONE]\n\n")
            time.sleep(sc.end_delay)
            self._end_chunked()

        def _event(self, obj: dict[str, Any]) -> None:
            self._chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

        def _reset(self) -> None:
            # SO_LINGER 0 makes close() send RST instead of FIN: a hard mid-stream reset.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

    return Handler


def _flushing_compressor(encoding: str | None):
    """compress(data, final=False) -> bytes that decode to `data` on their own arrival."""
    if encoding is None:
        return lambda data, final=False: data
    if encoding == "gzip":
        obj = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        return lambda data, final=False: obj.compress(data) + obj.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)
    if encoding == "br":
        import brotli

        obj = brotli.Compressor()
        return lambda data, final=False: obj.process(data) + (obj.finish() if final else obj.flush())
    if encoding == "zstd":
        import zstandard

        obj = zstandard.ZstdCompressor().compressobj()
        flush_mode = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        return lambda data, final=False: obj.compress(data) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH if final else flush_mode)
    raise ValueError(encoding)


def _usage(sc: Scenario) -> dict[str, Any]:
    return {
        "prompt_tokens": sc.prompt_tokens,
        "completion_tokens": sc.completion_tokens,
        "total_tokens": sc.prompt_tokens + sc.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": sc.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": sc.reasoning_tokens},
    }


def _completion(sc: Scenario, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": sc.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(sc.words)}, "finish_reason": sc.finish_reason}],
        "usage": _usage(sc),
    }


def _self_signed(directory: Path) -> tuple[str, str]:
    """A throwaway certificate for 127.0.0.1 (the proxy runs with ssl_insecure for it)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "upstream-cert.pem", directory / "upstream-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)
