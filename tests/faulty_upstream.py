"""An upstream that misbehaves at the byte level, for fault tests. The request path picks the
script: POST /<script>/v1/chat/completions. Every script is a list of steps: bytes to send,
a pause, a reset (RST), or a close (FIN). Runs its own asyncio loop in a thread on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from dataclasses import dataclass

RESET = object()
CLOSE = object()


@dataclass(frozen=True)
class Pause:
    seconds: float


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()) + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunk_delta(text: str) -> dict:
    return {"model": "m-1", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


HEAD_SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def json_response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    reason = {200: "OK", 502: "Bad Gateway"}.get(status, "Status")
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


def big_completion(megabytes: int) -> bytes:
    """A non-streamed completion whose content is `megabytes` MB, usage at the end."""
    filler = "x" * (megabytes * 1024 * 1024)
    return json.dumps({"model": "m-big", "choices": [{"index": 0, "message": {"role": "assistant", "content": filler}, "finish_reason": "length"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 4096, "total_tokens": 4101}}).encode()


SCRIPTS: dict[str, list] = {
    "reset-before-headers": [RESET],
    "reset-mid-stream": [HEAD_SSE, chunk(sse(chunk_delta("a"))), Pause(0.05), RESET],
    "stall-before-headers": [Pause(30)],
    "stall-mid-stream": [HEAD_SSE, chunk(sse(chunk_delta("a"))), Pause(30)],
    "truncated-sse": [HEAD_SSE, chunk(sse(chunk_delta("a"))), chunk(sse(chunk_delta("b"))), chunk(b""), CLOSE],
    "invalid-json": [HEAD_SSE, chunk(sse(chunk_delta("a"))), chunk(b"data: {not json\n\n"),
                     chunk(sse({"model": "m-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
                     chunk(b"data: [DONE]\n\n"), chunk(b""), CLOSE],
    "invalid-utf8": [HEAD_SSE, chunk(b'data: {"model":"m-1","choices":[{"index":0,"delta":{"content":"\xff\xfe"}}]}\n\n'),
                     chunk(sse({"model": "m-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
                     chunk(b"data: [DONE]\n\n"), chunk(b""), CLOSE],
    "ok": [json_response(200, json.dumps({"model": "m-ok", "choices": [{"index": 0, "message": {"content": "fine"}, "finish_reason": "stop"}],
                                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()), CLOSE],
    "html-502": [json_response(502, b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", "text/html"), CLOSE],
}


class FaultyUpstream:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self.big_body: bytes | None = None

    def __enter__(self) -> FaultyUpstream:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def url(self, script: str) -> str:
        return f"http://127.0.0.1:{self.port}/{script}/v1/chat/completions"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
            await reader.readexactly(length)
            script = head.split(b" ")[1].decode().split("/")[1]
            steps = [json_response(200, self.big_body), CLOSE] if script == "big-json" else SCRIPTS[script]
            for step in steps:
                if step is RESET:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if step is CLOSE:
                    break
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                    continue
                writer.write(step)
                await writer.drain()
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
