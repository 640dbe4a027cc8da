"""The metering process (addon/worker.py) of a real mitmdump: how it starts, ends, and fails.

The hooks hand what they captured to a child process; these tests kill, signal and stop the
processes the way users and service managers do, and count rows and drops afterwards.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.clients import httpx
from tests.conftest import process_gone, read_drops
from tests.upstream import Scenario

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}


def _send(proxy, upstream, n: int, stream: bool = False) -> list[int]:
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        return [client.post(f"{upstream.base_url}/chat/completions", json=dict(BODY, stream=stream)).status_code
                for _ in range(n)]


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])  # field 19 of proc(5)


def _start_slow_stream(proxy, upstream, chunk_delay: float) -> tuple[threading.Thread, dict]:
    """A streamed call with `chunk_delay` s between its chunks, in a thread of its own, open in
    the metering process once this returns; the dict gets its status and body when it ends."""
    upstream.scenarios["slow"] = Scenario(chunk_delay=chunk_delay)
    slow: dict = {}

    def stream() -> None:
        with httpx.Client(proxy=proxy.url, timeout=30) as client:
            response = client.post(f"{upstream.base_url}/chat/completions", json=dict(BODY, stream=True),
                                   headers={"x-scenario": "slow"})
            slow["status"], slow["body"] = response.status_code, response.content

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(0.3)  # the stream is open and handed over
    return thread, slow


def test_metering_runs_in_a_child_process_that_ends_with_mitmdump(start_proxy, upstream):
    proxy = start_proxy()
    worker = proxy.metering_pid()
    assert worker is not None
    assert _send(proxy, upstream, 3) == [200] * 3
    assert len(proxy.rows(3)) == 3
    assert _nice(worker) == min(19, _nice(proxy.proc.pid) + 10)  # it yields the CPU to the proxy
    assert proxy.stop() == 0
    assert process_gone(worker)
    assert "3 call(s) recorded" in proxy.log()


def test_a_killed_metering_process_is_counted_exactly_and_a_new_one_takes_over(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    assert _send(proxy, upstream, 10) == [200] * 10
    assert len(proxy.rows(10)) == 10
    time.sleep(0.3)  # its progress report (every 50-100 ms) says all 10 are stored
    # A stream open in the metering process when it dies: its row cannot be made, it is counted.
    thread, slow = _start_slow_stream(proxy, upstream, chunk_delay=0.2)
    first = proxy.metering_pid()
    os.kill(first, signal.SIGKILL)
    assert _send(proxy, upstream, 10) == [200] * 10  # traffic goes on
    thread.join(30)
    assert slow["status"] == 200 and slow["body"].endswith(b"data: [DONE]\n\n")
    second = proxy.metering_pid()
    assert second is not None and second != first
    assert proxy.stop() == 0
    log = proxy.log()
    assert "the metering process ended unexpectedly" in log
    rows, drops = proxy.rows(), read_drops(proxy.db_path)
    assert set(drops) <= {"metering_lost"}
    assert len(rows) >= 10 + 9  # only calls handed over while it was dying can be lost
    assert len(rows) + drops.get("metering_lost", 0) == 21
    assert all(r["success"] for r in rows)


def test_after_mitmdump_is_killed_the_metering_process_stores_what_it_had_and_exits(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    worker = proxy.metering_pid()
    assert _send(proxy, upstream, 20) == [200] * 20
    proxy.proc.kill()  # SIGKILL: no done hook, nothing handed over after this
    proxy.proc.wait(10)
    assert process_gone(worker), "the metering process outlived mitmdump"
    rows = proxy.rows(20, timeout=1)
    # Calls handed over in the last 10 ms before the kill may be lost; the rest are stored.
    assert 15 <= len(rows) <= 20 and all(r["success"] for r in rows)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "service-stop"])
def test_a_signal_to_the_whole_process_group_loses_no_call(start_proxy, upstream, sig):
    """Ctrl-C in a terminal, and a service manager's stop, signal every process of the group at
    once: the metering process must not die before mitmdump has handed it the last calls."""
    proxy = start_proxy("--set", "llm_metrics_log_calls=false", new_session=True)
    worker = proxy.metering_pid()
    assert _send(proxy, upstream, 10) + _send(proxy, upstream, 5, stream=True) == [200] * 15
    os.killpg(proxy.proc.pid, sig)
    proxy.proc.wait(30)
    assert process_gone(worker)
    rows = proxy.rows(15, timeout=1)
    assert len(rows) == 15 and all(r["success"] for r in rows)
    assert "15 call(s) recorded" in proxy.log()


def test_a_stopped_metering_process_never_makes_traffic_wait_and_the_calls_it_misses_are_counted(
        start_proxy, upstream):
    """SIGSTOP: a metering process that takes nothing (as on a machine starved of CPU). Past the
    hand-over's memory bound (8 MiB) calls are dropped and counted, and traffic flows on."""
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    worker = proxy.metering_pid()
    upstream.scenarios["big"] = Scenario(words=("x" * 4000,) * 2000)  # about 8 MB of events each
    slowest = 0.0
    os.kill(worker, signal.SIGSTOP)
    try:
        with httpx.Client(proxy=proxy.url, timeout=30) as client:
            for _ in range(6):
                response = client.post(f"{upstream.base_url}/chat/completions", json=dict(BODY, stream=True),
                                       headers={"x-scenario": "big"})
                assert response.status_code == 200 and response.content.endswith(b"data: [DONE]\n\n")
            for _ in range(10):
                started = time.perf_counter()
                assert client.post(f"{upstream.base_url}/chat/completions", json=BODY).status_code == 200
                slowest = max(slowest, time.perf_counter() - started)
    finally:
        os.kill(worker, signal.SIGCONT)
    assert slowest < 1.0
    assert proxy.stop() == 0
    rows, drops = proxy.rows(), read_drops(proxy.db_path)
    assert set(drops) == {"metering_behind"}
    assert len(rows) + drops["metering_behind"] == 16
    assert all(r["success"] for r in rows)
    assert "calls are not recorded (counted as metering_behind)" in proxy.log()
