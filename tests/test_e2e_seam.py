"""The seam between mitmproxy's hooks and the metering process, seen from outside: a real
mitmdump, real HTTP clients, the fake upstream, and the rows in SQLite or PostgreSQL.

These tests know nothing of the addon's internals. Each call carries a tag of its own in the
origin header (`x-llm-metrics-origin`, stored as the row's `origin` and never forwarded) and in
`x-call-id` (which the upstream sees), so a test can tell which call each row belongs to and
which calls the proxy provably received.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.clients import httpx
from tests.conftest import process_gone, read_drops, read_rows, wait_until
from tests.upstream import Scenario

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
DONE = b"data: [DONE]\n\n"
DELAY_ADDON = Path(__file__).with_name("delay_addon.py")


# -- calls -----------------------------------------------------------------------------------


def send_call(client, upstream, tag: str, stream: bool, scenario: str = "default",
              content: bytes | None = None) -> bool:
    """One chat completion through the proxy, tagged `tag`. Whether it completed at the client:
    a 200 read to its end, or for a stream, one whose `data: [DONE]` arrived (what follows it
    is no part of the call)."""
    headers = {"x-llm-metrics-origin": tag, "x-call-id": tag, "x-scenario": scenario,
               "content-type": "application/json"}
    if content is None:
        content = json.dumps(dict(BODY, stream=stream)).encode()
    status, received, whole = None, b"", False
    try:
        with client.stream("POST", f"{upstream.base_url}/chat/completions", content=content,
                           headers=headers) as response:
            status = response.status_code
            for piece in response.iter_raw():
                received += piece
        whole = True
    except httpx.HTTPError:
        pass
    if status != 200:
        return False
    return received.endswith(DONE) if stream else whole


def run_calls(proxy, upstream, n: int, clients: int, prefix: str) -> tuple[set[str], set[str]]:
    """`n` calls, every other one streamed, from `clients` concurrent clients (a connection
    each). Returns the tags of the calls sent and of those completed at the client."""

    def client_calls(k: int) -> list[tuple[str, bool]]:
        with httpx.Client(proxy=proxy.url, timeout=30) as client:
            return [(f"{prefix}-{i}", send_call(client, upstream, f"{prefix}-{i}", stream=i % 2 == 0))
                    for i in range(k, n, clients)]

    with ThreadPoolExecutor(clients) as pool:
        outcomes = [o for part in pool.map(client_calls, range(clients)) for o in part]
    return {tag for tag, _ in outcomes}, {tag for tag, ok in outcomes if ok}


def origins(rows: list[dict]) -> list[str]:
    return [row["origin"] for row in rows]


def stop_and_wait_for_metering(proxy) -> None:
    """SIGTERM, mitmdump's exit (code 0), then every metering process gone, so what is read
    next is all there will ever be."""
    metering = proxy.metering_pids()
    assert proxy.stop() == 0, proxy.log()[-3000:]
    for pid in metering:
        assert process_gone(pid, timeout=20), f"metering process {pid} outlived mitmdump by 20 s"


# -- 1. rows are in the database when mitmdump has exited, even on a machine with no idle CPU --


def _busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.slow
def test_every_completed_call_has_its_row_when_mitmdump_exits_with_both_cores_busy(start_proxy, upstream):
    """No idle CPU at all (the metering process may run at idle priority): mitmdump's exit
    after SIGTERM is the moment a service manager considers the run over, so every call the
    clients completed must be stored by then. Rows are read once, right after the exit."""
    proxy = start_proxy()
    busy = _busy_loops(2)  # this machine's two cores
    try:
        sent, completed = run_calls(proxy, upstream, 150, clients=4, prefix="busy")
        assert all(p.poll() is None for p in busy)  # the cores were taken all along
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(timeout=30) == 0
        stored = origins(read_rows(proxy.db_path))  # no polling after the exit
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert completed == sent and len(sent) == 150
    missing = completed - set(stored)
    assert not missing, f"{len(missing)} of 150 completed calls had no row when mitmdump exited"
    assert len(stored) == len(set(stored)) == 150


# -- 2. large uploads do not slow other calls down more than bare mitmdump, nor lose any ------


def _latency_during_uploads(proxy, upstream, body: bytes, prefix: str, uploads: int = 10):
    """Small calls one after another while `uploads` clients each post `body` at once. Returns
    the latencies (ms) of the small calls started within the upload window, and the tags of the
    calls sent and completed."""
    stop = threading.Event()
    small: list[tuple[float, float, str, bool]] = []  # start, latency, tag, completed

    def small_calls() -> None:
        with httpx.Client(proxy=proxy.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                tag, started = f"{prefix}-small-{i}", time.perf_counter()
                ok = send_call(client, upstream, tag, stream=False)
                small.append((started, (time.perf_counter() - started) * 1000, tag, ok))
                i += 1

    def upload(i: int) -> tuple[str, bool]:
        with httpx.Client(proxy=proxy.url, timeout=60) as client:
            return f"{prefix}-upload-{i}", send_call(client, upstream, f"{prefix}-upload-{i}", stream=False, content=body)

    looping = threading.Thread(target=small_calls)
    looping.start()
    try:
        assert wait_until(lambda: len(small) >= 5, timeout=10)  # its connection is warm
        window_start = time.perf_counter()
        with ThreadPoolExecutor(uploads) as pool:
            uploaded = list(pool.map(upload, range(uploads)))
        window_end = time.perf_counter()
    finally:
        stop.set()
        looping.join(60)
    latencies = [ms for started, ms, _, _ in small if window_start <= started < window_end]
    sent = {tag for tag, _ in uploaded} | {tag for _, _, tag, _ in small}
    completed = {tag for tag, ok in uploaded if ok} | {tag for _, _, tag, ok in small if ok}
    return latencies, sent, completed


@pytest.mark.slow
def test_5mb_uploads_slow_other_calls_no_more_than_2x_bare_mitmdump_and_every_call_has_its_row(start_proxy, upstream):
    """Rounds alternate between a bare mitmdump and one with the addon, each freshly started the
    same way (as a user starts it), so drift on the machine hits both alike; each side's
    latencies are pooled over its rounds (one round's maximum alone varies twofold between two
    bare runs)."""
    body = json.dumps({"model": "gpt-fake", "messages": [{"role": "user", "content": "x" * 5_000_000}]}).encode()
    latencies: dict[str, list[float]] = {"bare": [], "metered": []}
    sent: dict[str, set[str]] = {"bare": set(), "metered": set()}
    completed: dict[str, set[str]] = {"bare": set(), "metered": set()}
    stored: list[str] = []
    for round_ in range(2):
        for kind in ("bare", "metered"):
            proxy = start_proxy(name=f"{kind}{round_}", addon=kind == "metered")
            ms, round_sent, round_completed = _latency_during_uploads(proxy, upstream, body, f"{kind}{round_}")
            latencies[kind] += ms
            sent[kind] |= round_sent
            completed[kind] |= round_completed
            if kind == "metered":
                stop_and_wait_for_metering(proxy)
                stored += origins(read_rows(proxy.db_path))
            else:
                proxy.stop()

    p50 = {kind: statistics.median(ms) for kind, ms in latencies.items()}
    top = {kind: max(ms) for kind, ms in latencies.items()}
    summary = ", ".join(f"{kind} p50 {p50[kind]:.0f} ms max {top[kind]:.0f} ms (n={len(latencies[kind])})"
                        for kind in latencies)
    print(f"small calls during 10 x 5 MB uploads: {summary}")
    assert completed == sent  # everything was answered, through both
    assert all(len(ms) >= 10 for ms in latencies.values()), summary
    assert sorted(stored) == sorted(sent["metered"]), \
        f"{len(sent['metered'] - set(stored))} of {len(sent['metered'])} calls have no row"
    assert p50["metered"] <= 2 * p50["bare"], summary
    assert top["metered"] <= 2 * top["bare"], summary


# -- 3. the database file alone is whole after a clean exit --------------------------------------


def test_after_sigterm_a_copy_of_the_database_file_alone_holds_every_row(start_proxy, upstream, tmp_path):
    """Copying metrics.db without its -wal and -shm (a backup tool, scp, a file manager) must
    give every row: a clean exit leaves nothing in the write-ahead log."""
    proxy = start_proxy()
    sent, completed = run_calls(proxy, upstream, 300, clients=4, prefix="copy")
    assert completed == sent and len(sent) == 300
    stop_and_wait_for_metering(proxy)
    copy = tmp_path / "copy" / "metrics.db"
    copy.parent.mkdir()
    shutil.copyfile(proxy.db_path, copy)
    con = sqlite3.connect(copy)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = [tag for (tag,) in con.execute("SELECT origin FROM completion_requests")]
    finally:
        con.close()
    assert sorted(stored) == sorted(sent), f"the file alone holds {len(stored)} of 300 rows"


# -- 4. SIGTERM under concurrent load: each call is a row, or counted as lost ---------------------

# Calls of every length, so that SIGTERM finds some waiting for the upstream, some mid-stream,
# and some whose `data: [DONE]` reached the client while the upstream holds the body's end.
SHUTDOWN_MIX = [
    ("json", False, Scenario()),
    ("json-slow", False, Scenario(response_delay=0.4)),
    ("stream", True, Scenario(chunk_delay=0.01)),
    ("stream-slow", True, Scenario(first_token_delay=0.1, chunk_delay=0.1)),
    ("stream-held", True, Scenario(end_delay=0.8)),
]


class ShutdownLoad:
    """`clients` threads calling in a loop through `proxy`, each call of the mix in turn. Once
    `quiesce` is called no call starts; `started` holds every call that did."""

    def __init__(self, proxy, upstream, clients: int, prefix: str) -> None:
        self.proxy, self.upstream, self.prefix = proxy, upstream, prefix
        self.started: set[str] = set()
        self.completed: dict[str, float] = {}  # tag -> when it completed (perf_counter)
        self._lock = threading.Lock()
        self._stopped = False
        self._threads = [threading.Thread(target=self._client, args=(k,)) for k in range(clients)]
        for t in self._threads:
            t.start()

    def _next_tag(self, k: int, j: int) -> str | None:
        with self._lock:
            if self._stopped:
                return None
            tag = f"{self.prefix}-c{k}-{j}"
            self.started.add(tag)
            return tag

    def _client(self, k: int) -> None:
        with httpx.Client(proxy=self.proxy.url, timeout=15) as client:
            j = 0
            while (tag := self._next_tag(k, j)) is not None:
                name, stream, _ = SHUTDOWN_MIX[(k + j) % len(SHUTDOWN_MIX)]
                if send_call(client, self.upstream, tag, stream=stream, scenario=name):
                    self.completed[tag] = time.perf_counter()
                j += 1

    def quiesce(self) -> None:
        with self._lock:
            self._stopped = True

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "a client still hangs after mitmdump exited"


def _sigterm_run(start_proxy, upstream, run: int) -> list[str]:
    """One proxy loaded by 32 clients and stopped with SIGTERM; what broke the invariant."""
    proxy = start_proxy("--set", "llm_metrics_log_calls=false", name=f"run{run}")
    load = ShutdownLoad(proxy, upstream, clients=32, prefix=f"r{run}")
    try:
        assert wait_until(lambda: len(load.completed) >= 64, timeout=20), "the load did not get going"
    finally:
        load.quiesce()

    def all_received() -> bool:
        return load.started <= {s.headers.get("x-call-id") for s in upstream.served}

    assert wait_until(all_received, timeout=10), "the upstream never got some calls"
    sigterm_at = time.perf_counter()
    metering = proxy.metering_pids()
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=30) == 0, proxy.log()[-3000:]
    load.join(30)
    for pid in metering:
        assert process_gone(pid, timeout=20)
    rows, drops = read_rows(proxy.db_path), read_drops(proxy.db_path)

    in_flight = {tag for tag in load.started if load.completed.get(tag, float("inf")) > sigterm_at}
    tags = origins(rows)
    lost = drops.get("metering_lost", 0)
    outcomes = Counter(row["error_type"] or "success" for row in rows)
    print(f"run {run}: {len(load.started)} calls sent, {len(in_flight)} in flight at SIGTERM, "
          f"{len(load.completed)} completed at the client; rows {dict(outcomes)}, drops {drops}")
    assert in_flight, "SIGTERM found no call in flight: the run did not test the shutdown"
    problems = []
    if len(tags) != len(set(tags)):
        problems.append(f"run {run}: {len(tags) - len(set(tags))} call(s) with two rows")
    if not set(tags) <= load.started:
        problems.append(f"run {run}: rows for calls never sent: {sorted(set(tags) - load.started)[:5]}")
    if set(drops) - {"metering_lost"}:
        problems.append(f"run {run}: other drops: {drops}")
    if len(rows) + lost != len(load.started):
        problems.append(f"run {run}: {len(rows)} rows + {lost} metering_lost != {len(load.started)} calls sent "
                        f"(calls with no row: {sorted(load.started - set(tags))[:5]})")
    wrongly_cut = sorted(r["origin"] for r in rows if r["error_type"] == "proxy_shutdown" and r["origin"] in load.completed)
    if wrongly_cut:
        problems.append(f"run {run}: {len(wrongly_cut)} call(s) completed at the client stored as proxy_shutdown: "
                        f"{wrongly_cut[:5]}")
    return problems


@pytest.mark.slow
def test_sigterm_under_32_clients_stores_each_call_or_counts_it_lost_and_never_marks_a_completed_one_shutdown(
        start_proxy, upstream):
    """Five runs, a fresh proxy each. The invariant, exact: rows + `metering_lost` == calls sent.

    "Sent" has to be decidable from outside. A request still being written when SIGTERM lands
    may or may not have been read by the proxy, and nothing outside it can say which. So the
    clients load the proxy, then stop starting calls, and SIGTERM comes only once the upstream
    has received every call started (the proxy read each request whole and forwarded it). Many
    are still in flight then: waiting for a slow upstream answer, mid-stream, or past their
    `data: [DONE]` with the body's end held upstream. Every started call is thus sent, and each
    one must be exactly one row (a success, or `proxy_shutdown` / another failure for the calls
    the shutdown cut, which the clients see fail) or one unit of `metering_lost`; no row for a
    call that was never sent, none twice. A call whose response completed at the client (for a
    stream: its `data: [DONE]` arrived) is never stored as `proxy_shutdown`.
    """
    for name, _, scenario in SHUTDOWN_MIX:
        upstream.scenarios[name] = scenario
    problems = [problem for run in range(5) for problem in _sigterm_run(start_proxy, upstream, run)]
    assert not problems, "\n".join(problems)


# -- 5. a dead metering process and a hung database leave other traffic alone -------------------


def _one_call(proxy, upstream, tag: str) -> bool:
    with httpx.Client(proxy=proxy.url, timeout=5) as client:
        return send_call(client, upstream, tag, stream=False)


def _pg_count(url: str) -> int:
    import psycopg

    with psycopg.connect(url, connect_timeout=3) as con:
        (count,) = con.execute("SELECT count(*) FROM completion_requests").fetchone() or (0,)
        return count


@pytest.mark.slow
def test_with_the_metering_process_killed_and_postgresql_hung_plain_requests_are_served_within_1s(
        own_pg, start_proxy, upstream):
    """PostgreSQL stopped dead (SIGSTOP: connections open, no answer ever), then the metering
    process killed: whatever the addon does about the loss (counting it, metering on its own)
    must not make mitmproxy's traffic wait for the database."""
    proxy = start_proxy("--set", f"llm_metrics_db={own_pg.url()}")
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        assert all(send_call(client, upstream, f"before-{i}", stream=i == 1) for i in range(3))
    assert wait_until(lambda: _pg_count(own_pg.url()) == 3, timeout=10, every=0.1)
    worker = proxy.metering_pid()
    assert worker is not None
    served: list[tuple[float, int | None]] = []  # seconds, status
    try:
        own_pg.freeze()
        os.kill(worker, signal.SIGKILL)
        assert process_gone(worker, timeout=5)
        # An LLM call too, in the background: metering it may need the database; it is not timed.
        llm_call = threading.Thread(target=_one_call, args=(proxy, upstream, "after-kill"))
        llm_call.start()
        with httpx.Client(proxy=proxy.url, timeout=5) as client:
            until = time.monotonic() + 3
            while time.monotonic() < until:
                started = time.perf_counter()
                try:
                    status = client.get(f"{upstream.url}/health").status_code
                except httpx.HTTPError:
                    status = None
                served.append((time.perf_counter() - started, status))
        llm_call.join(10)
    finally:
        own_pg.thaw()
    slow = [(round(s, 3), status) for s, status in served if s >= 1.0 or status != 200]
    assert len(served) >= 3 and not slow, f"{len(slow)} of {len(served)} plain requests slow or failed: {slow[:5]}"


# -- 6. time spent before the addon's hook counts -----------------------------------------------


def _timed_stream(client, upstream, tag: str) -> tuple[float, float]:
    """A streamed call; (time to first content, time to the body's end) in ms, from just
    before the request was sent, as the client saw them."""
    request = client.build_request("POST", f"{upstream.base_url}/chat/completions", json=dict(BODY, stream=True),
                                   headers={"x-llm-metrics-origin": tag, "x-scenario": "ttft"})
    first_content = None
    received = b""
    started = time.perf_counter()
    response = client.send(request, stream=True)
    try:
        assert response.status_code == 200
        for piece in response.iter_raw():
            received += piece
            if first_content is None and _has_content(received):
                first_content = time.perf_counter()
        ended = time.perf_counter()
    finally:
        response.close()
    assert first_content is not None and received.endswith(DONE)
    return (first_content - started) * 1000, (ended - started) * 1000


def _has_content(sse: bytes) -> bool:
    for event in sse.split(b"\n\n")[:-1]:  # complete events only
        if event.startswith(b"data: {"):
            choices = json.loads(event[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                return True
    return False


def test_time_a_request_spends_in_earlier_addons_counts_in_ttft_and_latency(start_proxy, upstream):
    """An addon loaded before ours holds each request 120 ms in its requestheaders hook. The call
    started when the request reached the proxy, so that time is part of the call's time to first
    token and latency, which match what the client measured within 5 ms (the median over five
    calls: the client's own overhead alone varies by a few ms from call to call)."""
    upstream.scenarios["ttft"] = Scenario(first_token_delay=0.2, chunk_delay=0.02)
    proxy = start_proxy(scripts_before=[DELAY_ADDON])
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        assert send_call(client, upstream, "warm-up", stream=False)  # the connection is open
        measured = {f"timed-{i}": _timed_stream(client, upstream, f"timed-{i}") for i in range(5)}
    rows = {row["origin"]: row for row in proxy.rows(6)}
    ttft_gaps = [ttft_ms - rows[tag]["time_to_first_token_ms"] for tag, (ttft_ms, _) in measured.items()]
    total_gaps = [total_ms - rows[tag]["response_time_ms"] for tag, (_, total_ms) in measured.items()]
    seen = {tag: ((round(ttft), round(total)), (rows[tag]["time_to_first_token_ms"], rows[tag]["response_time_ms"]))
            for tag, (ttft, total) in measured.items()}  # (client ttft, latency), (row's)
    assert all(ttft >= 120 + 200 for ttft, _ in measured.values()), seen  # the hold and the upstream's delay
    assert abs(statistics.median(ttft_gaps)) <= 5, seen
    assert abs(statistics.median(total_gaps)) <= 5, seen


# -- 7. the per-call lines are not held in a buffer -------------------------------------------------


CALL_LINE = re.compile(r"^(\[[0-9:.]+\] )?llm ", re.MULTILINE)  # mitmproxy's time stamp, then the line


def test_call_lines_reach_a_log_file_within_1s_without_pythonunbuffered(start_proxy, upstream):
    """Under a service manager or `> proxy.log`, stdout is a file and Python buffers it unless
    PYTHONUNBUFFERED is set, which a user does not know to set."""
    proxy = start_proxy(wait=False, env_unset=("PYTHONUNBUFFERED",))
    proxy.wait_ready(addon_line=False)  # the addon's own start-up line may be the one held back
    assert b"PYTHONUNBUFFERED=" not in Path(f"/proc/{proxy.proc.pid}/environ").read_bytes()
    assert wait_until(lambda: _has_table(proxy.db_path), timeout=10)  # the addon records
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        assert send_call(client, upstream, "logged", stream=False)
    ended = time.monotonic()
    found = wait_until(lambda: CALL_LINE.search(proxy.log()) is not None, timeout=1.0)
    waited = time.monotonic() - ended
    assert proxy.proc.poll() is None
    assert found, f"no `llm ` line in the log {waited:.2f} s after the call; the log so far:\n{proxy.log()}"
    assert len(proxy.rows(1)) == 1  # the call was metered (the line was not just late)


def _has_table(db_path: Path) -> bool:
    if not db_path.exists():
        return False
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT 1 FROM sqlite_master WHERE name = 'completion_requests'").fetchone() is not None
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()
