"""The metering process (addon/worker.py) of a real mitmdump: how it starts, ends, and fails.

The hooks hand what they captured to a child process; these tests kill, signal and stop the
processes the way users and service managers do, and count rows and drops afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
import time

import pytest

from tests.clients import httpx
from tests.conftest import process_gone
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


def _drops(db_path) -> dict[str, int]:
    con = sqlite3.connect(db_path)
    try:
        return dict(con.execute("SELECT reason, sum(row_count) FROM dropped_rows GROUP BY reason"))
    finally:
        con.close()


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


def test_a_killed_metering_process_is_counted_and_metering_goes_on_in_mitmproxy(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    assert _send(proxy, upstream, 10) == [200] * 10
    assert len(proxy.rows(10)) == 10
    time.sleep(0.7)  # its progress report (every 0.5 s) says all 10 are stored
    # A stream open in the metering process when it dies: its row cannot be made, it is counted.
    thread, slow = _start_slow_stream(proxy, upstream, chunk_delay=0.2)
    os.kill(proxy.metering_pid(), signal.SIGKILL)
    assert _send(proxy, upstream, 10) == [200] * 10  # traffic goes on
    thread.join(30)
    assert slow["status"] == 200 and slow["body"].endswith(b"data: [DONE]\n\n")
    assert proxy.stop() == 0
    log = proxy.log()
    assert "the metering process ended unexpectedly" in log
    rows, drops = proxy.rows(), _drops(proxy.db_path)
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


needs_sched_idle = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"),
                                      reason="SCHED_IDLE is Linux's: elsewhere the process runs at nice 10")


def _starve_the_first_metering_process(proxy, upstream) -> tuple[int, threading.Thread, dict]:
    """Opens a slow stream in the first (idle-priority) metering process, stops that process
    (SIGSTOP: a machine busy with other work giving it no CPU, at worst), and sends 30 calls
    with 100 kB prompts, which the addon must hand to a second process without waiting.
    Returns the first process's pid and the stream's thread and result."""
    first = proxy.metering_pid()
    deadline = time.monotonic() + 10
    while os.sched_getscheduler(first) != os.SCHED_IDLE and time.monotonic() < deadline:
        time.sleep(0.05)  # it sets its own priority as it starts
    assert os.sched_getscheduler(first) == os.SCHED_IDLE
    assert _nice(first) == min(19, _nice(proxy.proc.pid) + 10)
    thread, slow = _start_slow_stream(proxy, upstream, chunk_delay=0.3)  # open in the first process
    os.kill(first, signal.SIGSTOP)
    # 3 MB of prompts: more than the pipe (1 MiB) and the addon's allowance for a slow child
    prompt = {"model": "gpt-fake", "messages": [{"role": "user", "content": "x" * 100_000}]}
    latencies = []
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        for _ in range(30):
            t = time.monotonic()
            assert client.post(f"{upstream.base_url}/chat/completions", json=prompt).status_code == 200
            latencies.append(time.monotonic() - t)
    assert max(latencies) < 2.0, latencies  # the hooks never waited for the stopped process
    assert "fell behind (the machine is busy): new calls go to a second one at nice 10; the 1 stream(s) open" in proxy.log()
    pids = proxy.metering_pids()
    assert pids[0] == first and len(pids) == 2
    assert os.sched_getscheduler(pids[1]) == os.SCHED_OTHER
    assert _nice(pids[1]) == min(19, _nice(proxy.proc.pid) + 10)
    assert len(proxy.rows(10, timeout=10)) >= 10  # the second one stores while the first is stopped
    return first, thread, slow


@needs_sched_idle
def test_a_metering_process_starved_of_cpu_hands_new_calls_to_one_at_nice_10_and_loses_nothing(start_proxy, upstream):
    """At idle priority the metering process gets only CPU nobody else wants; on a machine busy
    with other work it may get none: the proxy must not wait for it, nor lose what it had."""
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    first, thread, slow = _starve_the_first_metering_process(proxy, upstream)
    os.kill(first, signal.SIGCONT)
    thread.join(30)
    assert slow["status"] == 200 and slow["body"].endswith(b"data: [DONE]\n\n")
    # Once its stream ended, the first one stores what it had and exits, mitmdump running on.
    deadline = time.monotonic() + 20
    while not process_gone(first) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_gone(first)
    assert proxy.proc.poll() is None
    rows = proxy.rows(31, timeout=10)
    assert len(rows) == 31 and all(r["success"] for r in rows)
    streamed = [r for r in rows if r["is_streaming"]]
    assert len(streamed) == 1 and streamed[0]["finish_reason"] == "stop" and streamed[0]["chunk_count"] == 8  # whole
    assert _drops(proxy.db_path) == {}
    assert proxy.stop() == 0
    log = proxy.log()
    assert "lost" not in log
    # Each process sums up its part of the run; together, every call.
    parts = dict(re.findall(r"this run, (metered at [^:]+): (\d+) calls?", log))
    assert set(parts) == {"metered at idle priority", "metered at nice 10, once the machine got busy"}
    assert sum(int(n) for n in parts.values()) == 31


@needs_sched_idle
def test_a_starved_metering_process_that_dies_has_its_calls_counted_as_lost(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    first, thread, slow = _starve_the_first_metering_process(proxy, upstream)
    os.kill(first, signal.SIGKILL)  # stopped, then killed: whatever it was handed is gone
    thread.join(30)
    assert slow["status"] == 200 and slow["body"].endswith(b"data: [DONE]\n\n")  # traffic unaffected
    assert _send(proxy, upstream, 3) == [200] * 3
    assert proxy.stop() == 0
    log = proxy.log()
    assert "the retired metering process ended with exit code -9" in log
    rows, drops = proxy.rows(), _drops(proxy.db_path)
    assert set(drops) == {"metering_lost"}
    # 1 stream + 30 + 3 calls: each is a row (stored by the second process) or counted as lost
    assert len(rows) >= 10 + 3 and len(rows) + drops["metering_lost"] == 34
    assert all(not r["is_streaming"] for r in rows)  # the stream was the first process's
