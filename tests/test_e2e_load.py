"""Load, shutdown and crash through a real mitmdump. Bounded in count and time, loopback only.

Sizes come from the environment so a developer can run them small; CI runs the full sizes:
LLM_METRICS_LOAD_STREAMS (200 concurrent streams), LLM_METRICS_SOAK_REQUESTS (50,000),
LLM_METRICS_BIG_STREAM_MB (200).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time

import pytest

from tests.clients import httpx
from tests.conftest import process_gone, read_drops
from tests.upstream import Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STREAMS = int(os.environ.get("LLM_METRICS_LOAD_STREAMS", "200"))
SOAK = int(os.environ.get("LLM_METRICS_SOAK_REQUESTS", "50000"))
BIG_MB = int(os.environ.get("LLM_METRICS_BIG_STREAM_MB", "200"))
BODY = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}


async def _stream_once(client, url: str) -> float:
    started = time.perf_counter()
    async with client.stream("POST", url, json=dict(BODY, stream=True)) as response:
        assert response.status_code == 200
        async for _ in response.aiter_raw():
            pass
    return time.perf_counter() - started


def test_200_concurrent_streams_give_one_plausible_row_each(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    delay = 0.3
    upstream.scenarios["default"] = Scenario(first_token_delay=delay, chunk_delay=0.02)
    url = f"{upstream.base_url}/chat/completions"

    async def run():
        limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
        async with httpx.AsyncClient(proxy=proxy.url, limits=limits, timeout=120) as client:
            return await asyncio.gather(*[_stream_once(client, url) for _ in range(STREAMS)])

    durations = asyncio.run(run())
    assert len(durations) == STREAMS
    rows = proxy.rows(STREAMS, timeout=30)
    assert len(rows) == STREAMS
    for row in rows:
        assert row["success"] == 1 and row["chunk_count"] == 8
        # plausible: never before the upstream could have sent it, never after the call ended
        assert delay * 1000 - 5 <= row["time_to_first_token_ms"] <= row["time_to_last_token_ms"] <= row["response_time_ms"]
    ttfts = sorted(r["time_to_first_token_ms"] for r in rows)
    print(f"{STREAMS} concurrent streams: TTFT p50 {ttfts[len(ttfts) // 2]} ms, max {ttfts[-1]} ms (true {delay * 1000:.0f} ms)")


def test_soak_rows_equal_requests(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    url = f"{upstream.base_url}/chat/completions"
    concurrency = 16
    deadline = time.monotonic() + 20 * 60  # bounded in time: a hung run fails, never hangs CI

    async def worker(client, n: int, failures: list):
        for i in range(n):
            if time.monotonic() > deadline:
                failures.append("deadline")
                return
            response = await client.post(url, json=dict(BODY, stream=(i % 4 == 0)))
            if response.status_code != 200:
                failures.append(response.status_code)

    async def run():
        failures: list = []
        async with httpx.AsyncClient(proxy=proxy.url, timeout=60) as client:
            share = [SOAK // concurrency + (1 if k < SOAK % concurrency else 0) for k in range(concurrency)]
            await asyncio.gather(*[worker(client, n, failures) for n in share])
        return failures

    started = time.perf_counter()
    failures = asyncio.run(run())
    elapsed = time.perf_counter() - started
    assert failures == []
    assert proxy.stop() == 0
    rows = sqlite3.connect(proxy.db_path).execute("SELECT count(*), sum(success) FROM completion_requests").fetchone()
    print(f"soak: {SOAK} requests in {elapsed:.0f} s ({SOAK / elapsed:.0f}/s), rows {rows[0]}")
    assert rows == (SOAK, SOAK)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_streaming_a_200_mb_response_keeps_proxy_memory_flat(start_proxy, upstream):
    """The stream arrives at loopback speed, faster than any metering: the client gets every byte
    without waiting for it, memory stays within the hand-over's bound, and the call is either
    metered whole or, once too much waits for the metering, counted as `metering_behind`."""
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    word = "x" * 1000
    events = BIG_MB * 1024 * 1024 // (len(word) + 110)
    upstream.scenarios["big"] = Scenario(words=(word,) * events)
    client = httpx.Client(proxy=proxy.url, timeout=300)
    # warm up: a first small stream, so mitmproxy's own one-time allocations are in the baseline
    client.post(f"{upstream.base_url}/chat/completions", json=dict(BODY, stream=True))
    baseline = _rss_kb(proxy.proc.pid)
    peak = baseline
    received = 0
    with client.stream("POST", f"{upstream.base_url}/chat/completions", json=dict(BODY, stream=True),
                       headers={"x-scenario": "big"}) as response:
        for piece in response.iter_raw():
            received += len(piece)
            if received % (8 * 1024 * 1024) < len(piece):
                peak = max(peak, _rss_kb(proxy.proc.pid))
    peak = max(peak, _rss_kb(proxy.proc.pid))
    client.close()
    assert proxy.stop() == 0
    rows, drops = proxy.rows(), read_drops(proxy.db_path)
    print(f"streamed {received / 2**20:.0f} MB: proxy RSS {baseline / 1024:.1f} MB -> peak {peak / 1024:.1f} MB; "
          f"rows {len(rows)}, drops {drops}")
    assert received >= BIG_MB * 1024 * 1024 * 0.95
    assert (peak - baseline) / 1024 < 20
    assert set(drops) <= {"metering_behind"} and len(rows) + drops.get("metering_behind", 0) == 2
    big = [row for row in rows if row["chunk_count"] != 8]  # the warm-up stream has 8 events
    assert all(row["chunk_count"] == events + 2 and row["success"] == 1 for row in big)


def _load_in_background(proxy, upstream, n_threads: int, completed: list, stop: threading.Event) -> list[threading.Thread]:
    def loop():
        client = httpx.Client(proxy=proxy.url, timeout=10)
        while not stop.is_set():
            try:
                response = client.post(f"{upstream.base_url}/chat/completions", json=dict(BODY, stream=True))
                if response.status_code == 200 and response.content.endswith(b"data: [DONE]\n\n"):
                    completed.append(1)
            except httpx.HTTPError:
                return  # the proxy went away
    threads = [threading.Thread(target=loop) for _ in range(n_threads)]
    for t in threads:
        t.start()
    return threads


def test_sigterm_during_load_keeps_every_completed_call(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    upstream.scenarios["default"] = Scenario(chunk_delay=0.005)
    completed: list = []
    stop = threading.Event()
    threads = _load_in_background(proxy, upstream, 8, completed, stop)
    time.sleep(3)
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.proc.wait(30)
    stop.set()
    for t in threads:
        t.join(15)
    con = sqlite3.connect(proxy.db_path)
    ok_rows = con.execute("SELECT count(*) FROM completion_requests WHERE success").fetchone()[0]
    con.close()
    print(f"SIGTERM under load: {len(completed)} calls completed at the client, {ok_rows} successful rows")
    assert len(completed) > 50
    assert ok_rows >= len(completed)


def test_sigterm_after_a_stream_reached_its_end_marker_records_it_complete(start_proxy, upstream):
    """The client has every event up to `data: [DONE]`; the body's end is still held upstream
    when the proxy is stopped, so the response hook never runs. The call is complete all the same."""
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    hold = 20.0
    upstream.scenarios["held"] = Scenario(end_delay=hold)
    client = httpx.Client(proxy=proxy.url, timeout=30)
    body = dict(BODY, stream=True, stream_options={"include_usage": True})
    received = b""
    with client.stream("POST", f"{upstream.base_url}/chat/completions", json=body,
                       headers={"x-scenario": "held"}) as response:
        for piece in response.iter_raw():
            received += piece
            if received.endswith(b"data: [DONE]\n\n"):
                break
        stopped = time.perf_counter()
        assert proxy.stop() == 0
    assert time.perf_counter() - stopped < hold / 2  # the proxy did not wait for the body's end
    [row] = proxy.rows(1)
    assert (row["success"], row["error_type"], row["status_code"]) == (1, None, 200)
    assert (row["prompt_tokens"], row["completion_tokens"], row["finish_reason"]) == (11, 6, "stop")
    assert row["time_to_first_token_ms"] <= row["time_to_last_token_ms"] <= row["response_time_ms"]


def test_sigkill_during_load_leaves_a_sound_database_and_the_next_start_works(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    completed: list = []
    stop = threading.Event()
    threads = _load_in_background(proxy, upstream, 8, completed, stop)
    time.sleep(3)
    worker = proxy.metering_pid()
    assert worker is not None
    proxy.proc.kill()
    proxy.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(15)
    assert process_gone(worker)  # after storing what it was handed (tests/test_e2e_worker.py)
    con = sqlite3.connect(proxy.db_path)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    before = con.execute("SELECT count(*) FROM completion_requests").fetchone()[0]
    con.close()
    again = start_proxy("--set", f"llm_metrics_db={proxy.db_path}", name="again")
    httpx.Client(proxy=again.url).post(f"{upstream.base_url}/chat/completions", json=BODY)
    assert len(again.rows(before + 1)) == before + 1
    print(f"SIGKILL under load: {len(completed)} calls completed, {before} rows survived, restart ok")
