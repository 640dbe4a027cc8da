"""A lean fake OpenAI-compatible upstream for benchmarks: asyncio, one process, 127.0.0.1 only.

    python bench/_upstream.py [--impl lean|tests]    prints "PORT <n>" once listening

The tests' `FakeUpstream` (a `ThreadingHTTPServer`) costs more CPU per request than this one and
holds a thread per connection; `bench/upstream_check.py` compares the two. Every response is
pre-rendered, so the upstream spends its time in the socket calls and little else.

A streamed answer is shaped by request headers: `x-bench-words` content events,
`x-bench-first-delay-ms` before the first content event, `x-bench-chunk-delay-ms` between the
later ones. Before `data: [DONE]` the stream carries an SSE comment with the truth measured here:
`: truth_ttft_us=N`, the time from having read the request to having written the first content
event (an SSE comment is ignored by every client and by the addon's metering).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

MODEL = "gpt-bench-2026-01-01"
_BASE = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": MODEL}


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17,
              "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
}).encode()
COMPLETION_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    % (len(COMPLETION), COMPLETION)
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
)
ROLE_EVENT = _chunked(_event({**_BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], "usage": None}))
WORDS = [f" w{i}" for i in range(1000)]
CONTENT_EVENTS = [_chunked(_event({**_BASE, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}], "usage": None})) for w in WORDS]
FINISH_EVENT = _chunked(_event({**_BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}))
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def _usage_event(words: int) -> bytes:
    usage = {"prompt_tokens": 11, "completion_tokens": words, "total_tokens": 11 + words}
    return _chunked(_event({**_BASE, "choices": [], "usage": usage}))


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return lines[0], headers, body


async def _stream(writer: asyncio.StreamWriter, headers: dict[bytes, bytes], received: float) -> None:
    words = min(int(headers.get(b"x-bench-words", b"6")), len(WORDS))
    first_delay = int(headers.get(b"x-bench-first-delay-ms", b"0")) / 1000
    chunk_delay = int(headers.get(b"x-bench-chunk-delay-ms", b"0")) / 1000
    writer.write(STREAM_HEAD + ROLE_EVENT)
    if first_delay:
        await asyncio.sleep(first_delay)
    truth_us = 0
    for i in range(words):
        if i and chunk_delay:
            await asyncio.sleep(chunk_delay)
        writer.write(CONTENT_EVENTS[i])
        if i == 0:
            truth_us = round((time.perf_counter() - received) * 1e6)
        if not chunk_delay and i % 16 == 15:
            await writer.drain()  # unpaced: let a slow reader push back
    writer.write(FINISH_EVENT + _usage_event(words)
                 + _chunked(b": truth_ttft_us=%d\n\ndata: [DONE]\n\n" % truth_us) + b"0\r\n\r\n")
    await writer.drain()


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request = await _read_request(reader)
            if request is None:
                break
            received = time.perf_counter()
            start_line, headers, body = request
            if not start_line.split(b" ")[1].split(b"?")[0].endswith(b"/completions"):
                writer.write(NOT_FOUND)
            elif b'"stream":true' in body.replace(b" ", b""):
                await _stream(writer, headers, received)
                continue
            else:
                writer.write(COMPLETION_RESPONSE)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _main_lean() -> None:
    server = await asyncio.start_server(_serve_connection, "127.0.0.1", 0, backlog=512)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def _main_tests() -> None:
    """The tests' ThreadingHTTPServer upstream, only to compare its capacity with the lean one."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.upstream import FakeUpstream

    with FakeUpstream() as upstream:
        print(f"PORT {upstream.port}", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=("lean", "tests"), default="lean")
    impl = parser.parse_args().impl
    try:
        if impl == "lean":
            asyncio.run(_main_lean())
        else:
            _main_tests()
    except KeyboardInterrupt:
        pass
