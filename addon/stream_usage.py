"""Usage for every OpenAI-compatible stream: the one place the proxy edits traffic.

A streamed Chat Completions or Completions call reports its token counts only when the request
says `"stream_options": {"include_usage": true}`, and the openai SDK (and everything built on it)
leaves that out unless the caller sets it. Where the upstream is known to accept it, the proxy
adds it to the request (`request_usage`), lets the metering read the usage chunk the upstream then
sends, and takes that chunk out on its way to the client (`addon.wire.sse_filter`), so the
client gets the events it would have got.

Where the upstream is not known to accept it, nothing is changed: a server that rejects unknown
fields (Mistral answers 422, old Azure api-versions 400) would fail a call that works without the
proxy. Such a stream's row gets an estimate instead (`addon.record`, usage_source `estimated`).

Known to accept it: the hosts in `DOCUMENTED_HOSTS` and Azure OpenAI's newer API versions (their
documentation), servers this run has seen identify themselves as vLLM, SGLang, llama.cpp, Ollama
or LM Studio (`ServerMemory.learn`), and hosts the user names (`llm_metrics_usage_hosts`); never
one that has refused it this run.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from json.decoder import scanstring  # type: ignore[attr-defined]  # not in typeshed's stub
from typing import Any

from mitmproxy import http

from .wire.sse_filter import UsageChunkFilter

log = logging.getLogger("addon.llm_metrics")  # said as the addon's own lines

# Their API references document stream_options.include_usage. Not Mistral (it refuses unknown
# fields: 422 "extra_forbidden" on stream_options) nor Together (not documented; it sends usage
# in the last chunk anyway).
DOCUMENTED_HOSTS = frozenset({"api.openai.com", "openrouter.ai", "api.groq.com", "api.deepseek.com", "api.fireworks.ai"})
# Azure OpenAI accepts it from api-version 2024-09-01-preview on, and on its v1 API; older
# versions answer 400 "Unknown parameter: 'stream_options'".
_AZURE_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com")
AZURE_MIN_API_VERSION = "2024-09-01"
_AZURE_V1 = b"/openai/v1/"
_PATHS = (b"/chat/completions", b"/completions")

# How a server says what it is. llama-server sends `Server: llama.cpp`; vLLM, SGLang and LM Studio
# name themselves as the owner of each model in GET /v1/models; Ollama puts `fp_ollama` in the
# system_fingerprint of every chunk.
_SERVER_HEADER_MARKS = (("llama.cpp", "llama.cpp"), ("vllm", "vLLM"), ("sglang", "SGLang"), ("ollama", "Ollama"),
                        ("lm studio", "LM Studio"), ("lmstudio", "LM Studio"))
_MODELS_OWNER = re.compile(rb'"owned_by"\s*:\s*"(vllm|sglang|llamacpp|organization_owner)"')
_OWNERS = {b"vllm": "vLLM", b"sglang": "SGLang", b"llamacpp": "llama.cpp", b"organization_owner": "LM Studio"}
_OLLAMA_CHUNK = re.compile(rb'"system_fingerprint"\s*:\s*"fp_ollama"')
SNIFF_BYTES = 4096  # of a stream's start, looked at for a server's marks
MODELS_BODY_LIMIT = 1 << 20  # a longer model list is not looked at
MEMORY_LIMIT = 4096  # hosts remembered; past it, no more are learned

_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_WS = re.compile(r"[ \t\n\r]*")
_decoder = json.JSONDecoder()
_ADDED = '"stream_options":{"include_usage":true},'


def request_usage(body: bytes) -> bytes | None:
    """The body with `stream_options.include_usage` true, every other byte as it was; None where
    it needs no change (not a stream, usage asked for already) or cannot be changed safely (not a
    UTF-8 JSON object, a key twice, `stream_options` not an object)."""
    if not _STREAM_TRUE.search(body):
        return None
    try:
        text = body.decode("utf-8")
        members = _members(text)
    except (UnicodeDecodeError, ValueError, RecursionError, IndexError):
        return None
    if members is None:
        return None
    stream = [m for m in members if m[0] == "stream"]
    options = [m for m in members if m[0] == "stream_options"]
    if len(stream) != 1 or stream[0][1] is not True or len(options) > 1:
        return None
    if not options:
        at = text.index("{") + 1
        return (text[:at] + _ADDED + text[at:]).encode("utf-8")
    _, value, start, end = options[0]
    if value is None:
        value = {}
    if not isinstance(value, dict) or value.get("include_usage") is True:
        return None
    replaced = json.dumps({**value, "include_usage": True}, separators=(",", ":"))
    return (text[:start] + replaced + text[end:]).encode("utf-8")


def _members(text: str) -> list[tuple[str, Any, int, int]] | None:
    """(key, value, value's start, value's end) of each member of a JSON object, in order; None
    when the text is not one object. Values are read by json's own scanner: spans are exact."""
    i = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if text[i] != "{":
        return None
    i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
    members: list[tuple[str, Any, int, int]] = []
    if text[i] == "}":
        i += 1
    else:
        while True:
            if text[i] != '"':
                return None
            key, i = scanstring(text, i + 1)
            i = _WS.match(text, i).end()  # type: ignore[union-attr]
            if text[i] != ":":
                return None
            start = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            value, end = _decoder.raw_decode(text, start)
            members.append((key, value, start, end))
            i = _WS.match(text, end).end()  # type: ignore[union-attr]
            if text[i] == "}":
                i += 1
                break
            if text[i] != ",":
                return None
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
    return members if _WS.match(text, i).end() == len(text) else None  # type: ignore[union-attr]


def parse_usage_hosts(values: Sequence[str]) -> frozenset[str]:
    """`llm_metrics_usage_hosts`: HOST or HOST:PORT, comma-separated or repeated."""
    return frozenset(item.strip().lower() for value in values for item in value.split(",") if item.strip())


class ServerMemory:
    """What this run learned of each upstream (host, port): the server it said it is, and whether
    it refused `stream_options`. Bounded: past MEMORY_LIMIT hosts, no new one is learned."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, int], str] = {}
        self.refusing: set[tuple[str, int]] = set()

    def learn(self, host: str, port: int, kind: str | None) -> None:
        if kind and (host, port) not in self.servers and len(self.servers) < MEMORY_LIMIT:
            self.servers[(host, port)] = kind
            log.info("llm-metrics: %s:%d identified as %s: it accepts stream_options", host, port, kind)

    def refuse(self, host: str, port: int, status: int) -> None:
        if (host, port) not in self.refusing and len(self.refusing) < MEMORY_LIMIT:
            self.refusing.add((host, port))
            log.warning("llm-metrics: %s:%d refused stream_options (HTTP %d): usage is no longer asked for there "
                        "this run; its streams get estimated usage", host, port, status)


def server_from_header(value: str | None) -> str | None:
    text = (value or "").lower()
    return next((kind for mark, kind in _SERVER_HEADER_MARKS if mark in text), None)


def server_from_models(body: bytes) -> str | None:
    """The server a GET …/models answer names as the owner of its models, if one we know."""
    m = _MODELS_OWNER.search(body)
    return _OWNERS[m.group(1)] if m else None


def server_from_body(data: bytes) -> str | None:
    return "Ollama" if _OLLAMA_CHUNK.search(data) else None


def accepts_stream_options(host: str, port: int, path: bytes, memory: ServerMemory, named: frozenset[str]) -> bool:
    """Whether a request to this upstream can carry stream_options without failing: `path` is the
    request's path with its query (Azure's api-version)."""
    if (host, port) in memory.refusing:
        return False
    if host in DOCUMENTED_HOSTS or host in named or f"{host}:{port}" in named or (host, port) in memory.servers:
        return True
    if host.endswith(_AZURE_SUFFIXES):
        return _azure_accepts(path)
    return False


def _azure_accepts(path: bytes) -> bool:
    if _AZURE_V1 in path:
        return True
    version = re.search(rb"[?&]api-version=(\d{4}-\d{2}-\d{2})", path)
    return version is not None and version.group(1).decode() >= AZURE_MIN_API_VERSION


def is_refusal(status: int, body: bytes, documented: bool) -> bool:
    """Whether an answer to a request the proxy added stream_options to refuses it. A 4xx that
    names it does; from an upstream not documented to accept it, any 400 or 422 does too (a server
    that rejects unknown fields may not say which): better estimated rows than failing calls."""
    if not 400 <= status < 500:
        return False
    if b"stream_options" in body or b"include_usage" in body:
        return True
    return status in (400, 422) and not documented


class UsageInjector:
    """The hooks' side: called by `LLMMetrics` for the possible LLM calls it captures. Holds the
    options, the memory of servers, and which flows were changed (by flow.id)."""

    def __init__(self) -> None:
        self.enabled = True
        self.named: frozenset[str] = frozenset()
        self.memory = ServerMemory()
        self.injected: set[str] = set()
        self._said_compressed = False

    def configure(self, enabled: bool, hosts: Sequence[str]) -> None:
        self.enabled = enabled
        self.named = parse_usage_hosts(hosts)

    def request(self, flow: http.HTTPFlow, body_limit: int) -> None:
        """A possible LLM call's whole request: asks for usage where that is safe."""
        request = flow.request
        data = request.data
        path = data.path.split(b"?", 1)[0]
        body = request.raw_content
        if not (self.enabled and path.endswith(_PATHS) and body and len(body) <= body_limit):
            return
        if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
            return  # a compressed body would have to be encoded again: left as it is
        host = data.host.lower()
        if not accepts_stream_options(host, data.port, data.path, self.memory, self.named):
            return
        changed = request_usage(body)
        if changed is None:
            return
        request.content = changed  # Content-Length follows
        # The usage chunk is taken out of the response on its way: it must not come compressed.
        request.headers["accept-encoding"] = "identity"
        self.injected.add(flow.id)

    def responseheaders(self, flow: http.HTTPFlow, on_error: Callable[[str, Exception], None]) -> None:
        """Learns what the server says it is; for a changed call's event stream, puts the filter
        behind the metering's stream callable (the metering reads the upstream's bytes)."""
        response = flow.response
        assert response is not None
        host, port = flow.request.data.host.lower(), flow.request.data.port
        self.memory.learn(host, port, server_from_header(response.headers.get("server")))
        stream = response.stream
        if flow.id not in self.injected:
            if self.enabled and stream and (host, port) not in self.memory.servers:
                response.stream = _sniffing(stream, host, port, self.memory)
            return
        if not stream or response.status_code >= 400:
            return
        if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
            if not self._said_compressed:
                self._said_compressed = True
                log.warning("llm-metrics: %s:%d compressed a stream asked for uncompressed: its usage chunk reaches "
                            "the client", host, port)
            return
        if "content-length" in response.headers:  # the client gets fewer bytes than the upstream sent
            del response.headers["content-length"]
            if response.http_version.startswith("HTTP/1"):
                response.headers["transfer-encoding"] = "chunked"
        response.stream = _filtering(stream, UsageChunkFilter(), on_error)

    def response(self, flow: http.HTTPFlow) -> None:
        """Any whole response (every flow's: kept to a few lookups): a changed call refused by its
        upstream is remembered; a model list may name its server."""
        response = flow.response
        changed = flow.id in self.injected
        if changed:
            self.injected.discard(flow.id)
        if response is None:
            return
        data = flow.request.data
        if changed:
            plain = not response.stream and not response.headers.get("content-encoding")
            body = (response.raw_content or b"") if plain else b""
            host = data.host.lower()
            if is_refusal(response.status_code, body, host in DOCUMENTED_HOSTS):
                self.memory.refuse(host, data.port, response.status_code)
        elif data.method == b"GET" and response.status_code == 200 and data.path.split(b"?", 1)[0].endswith(b"/models"):
            body = response.raw_content or b""
            if len(body) <= MODELS_BODY_LIMIT and not response.headers.get("content-encoding"):
                self.memory.learn(data.host.lower(), data.port, server_from_models(body))

    def forget(self, flow: http.HTTPFlow) -> None:
        self.injected.discard(flow.id)


def _filtering(inner: Any, filt: UsageChunkFilter,
               on_error: Callable[[str, Exception], None]) -> Callable[[bytes], Iterable[bytes] | bytes]:
    """The stream callable of a changed call: the metering's first (it sees the upstream's
    bytes), then the filter. Never an empty piece before the end: over HTTP/1.1 chunked, an empty
    chunk would end the body. A filter failure passes what it held (the piece it failed on
    included) and everything after."""
    metering = inner if callable(inner) else None

    def on_chunk(data: bytes) -> Iterable[bytes] | bytes:
        if metering is not None:
            data = metering(data)
        try:
            out = filt.feed(data) if data else filt.close()
        except Exception as exc:
            on_error("usage filter", exc)
            out = filt.abandon()
        return out if out or not data else []

    return on_chunk


def _sniffing(inner: Any, host: str, port: int, memory: ServerMemory) -> Callable[[bytes], bytes]:
    """The stream callable of an unchanged call on a server not yet known: the first bytes are
    looked at for a mark (Ollama's), then the stream is the metering's alone."""
    metering = inner if callable(inner) else None
    seen = 0

    def on_chunk(data: bytes) -> bytes:
        nonlocal seen
        if seen < SNIFF_BYTES:
            seen += len(data)
            try:
                memory.learn(host, port, server_from_body(data[:SNIFF_BYTES]))
            except Exception:  # never the traffic's problem
                seen = SNIFF_BYTES
        return metering(data) if metering is not None else data

    return on_chunk
