"""Load generator for the benchmarks: its own process, raw HTTP/1.1 keep-alive on asyncio.

    python bench/_client.py '<json spec>'     prints one JSON object with the measurements

A hand-written client because an HTTP library's own CPU per request would be taken from the one
core the proxy does not use (the upstream runs there too). Each of `concurrency` workers keeps one
connection open and sends one uncounted small request on it; then all run together for `seconds`
(or `requests` in all).

spec: target ("direct" or a proxy port), upstream_port, mode ("chat" | "stream"), concurrency,
seconds, requests (optional cap), stream_headers (for "stream": x-bench-* headers), tag (origin
prefix for the x-llm-metrics-origin header, so rows can be matched to streams), stagger_s (spread
the workers' first streams over this long).
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time

CHAT_BODY = json.dumps({
    "model": "gpt-bench", "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 16, "temperature": 0.2,
}).encode()
STREAM_BODY = json.dumps({
    "model": "gpt-bench", "messages": [{"role": "user", "content": "Count slowly."}],
    "stream": True, "stream_options": {"include_usage": True},
}).encode()
CONTENT_MARKER = b'"delta":{"content":"'
TRUTH = re.compile(rb": truth_ttft_us=(\d+)")


def _request(spec: dict, body: bytes, extra: dict[str, str]) -> bytes:
    up = spec["upstream_port"]
    target = "/v1/chat/completions" if spec["target"] == "direct" else f"http://127.0.0.1:{up}/v1/chat/completions"
    lines = [f"POST {target} HTTP/1.1", f"host: 127.0.0.1:{up}", "content-type: application/json",
             "user-agent: llm-metrics-bench/1", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader, on_piece=None, on_head=None) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if on_head:
        on_head()
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    if b"transfer-encoding: chunked" not in lower:
        m = re.search(rb"content-length:\s*(\d+)", lower)
        body = await reader.readexactly(int(m.group(1))) if m else b""
        if on_piece:
            on_piece(body)
        return status, body
    pieces = []
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            return status, b"".join(pieces)
        piece = (await reader.readexactly(size + 2))[:-2]
        pieces.append(piece)
        if on_piece:
            on_piece(piece)


async def _connect(spec: dict):
    port = spec["upstream_port"] if spec["target"] == "direct" else spec["target"]
    return await asyncio.open_connection("127.0.0.1", port)


async def _warm(spec, conn) -> None:
    """One uncounted request per connection: the proxy then has its upstream connection open."""
    reader, writer = conn
    writer.write(_request(spec, CHAT_BODY, {"x-llm-metrics-origin": "warm-up"}))
    await _read_response(reader)


async def _chat_worker(spec, conn, start, out):
    reader, writer = conn
    request = _request(spec, CHAT_BODY, {})
    await start.wait()
    while not out["stop"]:
        t0 = time.perf_counter()
        writer.write(request)
        status, _ = await _read_response(reader)
        t1 = time.perf_counter()
        if out["stop"]:
            break  # finished after the window closed: not counted
        if status != 200:
            out["errors"] += 1
        out["latency_us"].append(round((t1 - t0) * 1e6))
        out["done"] += 1
        if spec.get("requests") and out["done"] >= spec["requests"]:
            out["stop"] = True


async def _stream_worker(spec, conn, start, out, worker):
    reader, writer = conn
    extra = dict(spec.get("stream_headers") or {})
    await start.wait()
    # Spread the first requests over `stagger_s`: streams of equal length started together stay
    # in lock-step, and every wave of requests queues at the proxy at once (not what users do).
    await asyncio.sleep(spec.get("stagger_s", 0) * worker / spec["concurrency"])
    n = 0
    while not out["stop"]:
        tag = f"{spec.get('tag', 'bench')}-{worker}-{n}"
        n += 1
        first = {}
        tail = [b""]

        def on_piece(piece, first=first, tail=tail):
            now = time.perf_counter()
            if "t" not in first and CONTENT_MARKER in piece:
                first["t"] = now
            # Events whose "data: " ends in this piece (a 5-byte tail cannot hold a whole one).
            if now < out["deadline"]:
                out["events_in_window"] += (tail[0] + piece).count(b"data: ")
            tail[0] = piece[-5:]

        t0 = time.perf_counter()
        writer.write(_request(spec, STREAM_BODY, {**extra, "x-llm-metrics-origin": tag}))
        status, body = await _read_response(reader, on_piece, lambda first=first: first.setdefault("head", time.perf_counter()))
        t1 = time.perf_counter()
        events = body.count(b"data: ")  # [DONE] included
        if t1 > out["deadline"]:
            continue  # ended after the window: its events count above, its times do not
        truth = TRUTH.search(body)
        out["streams"].append({
            "tag": tag, "status": status, "events": events - 1,  # [DONE] is not a data event
            "ttfc_us": round((first["t"] - t0) * 1e6) if "t" in first else None,
            "ttfb_us": round((first["head"] - t0) * 1e6),
            "total_us": round((t1 - t0) * 1e6),
            "truth_ttft_us": int(truth.group(1)) if truth else None,
        })
        if spec.get("requests") and len(out["streams"]) >= spec["requests"]:
            out["stop"] = True


async def main(spec: dict) -> dict:
    conns = await asyncio.gather(*(_connect(spec) for _ in range(spec["concurrency"])))
    await asyncio.gather(*(_warm(spec, c) for c in conns))
    start = asyncio.Event()
    out = {"latency_us": [], "done": 0, "errors": 0, "stop": False, "streams": [], "events_in_window": 0,
           "deadline": float("inf")}
    if spec["mode"] == "chat":
        tasks = [asyncio.create_task(_chat_worker(spec, c, start, out)) for c in conns]
    else:
        tasks = [asyncio.create_task(_stream_worker(spec, c, start, out, i)) for i, c in enumerate(conns)]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out["deadline"] = t0 + spec["seconds"]
    start.set()
    while not out["stop"] and time.perf_counter() < out["deadline"]:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    out["stop"] = True
    # Let streams in flight finish (their events are real work the proxy did), briefly.
    await asyncio.wait(tasks, timeout=spec.get("drain_seconds", 10))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for _, w in conns:
        w.close()
    out.pop("stop")
    out.pop("deadline")
    out["elapsed_s"] = elapsed
    out["client_cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
