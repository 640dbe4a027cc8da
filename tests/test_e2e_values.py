"""Values from the wire that the database would refuse, and bodies that would not fit in memory,
through a real mitmdump: every call gets its row (cut or left out where it must be, and saying
so), counts are exact, traffic passes byte for byte, and memory stays bounded."""

from __future__ import annotations

import json
import random
import string
import time
import zlib
from pathlib import Path

import pytest

from tests.clients import httpx
from tests.conftest import read_drops, read_rows
from tests.upstream import PARSE_ERROR, Scenario

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}


def _random_text(n: int, seed: int) -> str:
    """Incompressible: PostgreSQL compresses a long value before indexing it."""
    return "".join(random.Random(seed).choices(string.ascii_letters + string.digits, k=n))


def _wait_rows(location: str, expected: int, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(rows := read_rows(location)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows


def _location(kind: str, proxy_dir: Path, request) -> str:
    return str(proxy_dir / "metrics.db") if kind == "sqlite" else request.getfixturevalue("pg_url")


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


# -- text the database refuses ---------------------------------------------------------------------


def test_a_3000_character_origin_and_model_are_cut_and_every_later_call_is_stored_in_postgresql(
        start_proxy, upstream, pg_url):
    """Both overflowed PostgreSQL's 2704-byte index entry for report_calls; the writer took that
    for an outage and retried it forever: 0 of the 51 calls were stored."""
    origin, model = _random_text(3000, 1), _random_text(3000, 2)
    upstream.scenarios["long-model"] = Scenario(model=model)
    proxy = start_proxy("--set", f"llm_metrics_db={pg_url}", "--set", "llm_metrics_log_calls=false")
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        first = client.post(f"{upstream.base_url}/chat/completions", json=BODY,
                            headers={"x-llm-metrics-origin": origin, "x-scenario": "long-model"})
        assert first.status_code == 200 and first.json()["model"] == model
        assert "x-llm-metrics-origin" not in upstream.served[0].headers  # the tag is never forwarded
        for i in range(50):
            assert client.post(f"{upstream.base_url}/chat/completions", json=dict(BODY, stream=i % 2 == 0)).status_code == 200
    rows = _wait_rows(pg_url, 51)
    assert proxy.stop() == 0
    rows = read_rows(pg_url)
    assert len(rows) == 51 and read_drops(pg_url) == {}
    assert rows[0]["origin"] == origin[:127] + "…" and rows[0]["model"] == model[:199] + "…"
    assert all(r["success"] for r in rows)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_latin1_user_agent_and_nul_or_surrogates_in_a_model_are_stored_as_valid_text(
        start_proxy, upstream, kind, request, tmp_path):
    """The hooks decode header bytes with surrogateescape; no driver can write a lone surrogate
    (or PostgreSQL a NUL): the row was a write_error "(a bug: please report it)" whose log line
    repeated the whole value."""
    location = _location(kind, tmp_path / "proxy", request)
    upstream.scenarios["odd-model"] = Scenario(model="gpt\x00fake\ud800")  # JSON escapes: \u0000, \ud800
    proxy = start_proxy("--set", f"llm_metrics_db={location}")
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        latin1 = client.post(f"{upstream.base_url}/chat/completions", json=BODY,
                             headers={"user-agent": b"Caf\xe9Bot/1.0"})
        odd = client.post(f"{upstream.base_url}/chat/completions", json=BODY,
                          headers={"x-scenario": "odd-model", "x-llm-metrics-origin": b"caf\xe9-\xff"})
        assert (latin1.status_code, odd.status_code) == (200, 200)
        assert upstream.served[0].headers["user-agent"] == "Caf\xe9Bot/1.0"  # forwarded as it came
    _wait_rows(location, 2)
    assert proxy.stop() == 0
    rows = read_rows(location)
    assert [(r["origin"], r["model"]) for r in rows] == [
        ("Caf\ufffdBot", "gpt-fake-2026-01-01"), ("caf\ufffd-\ufffd", "gpt\ufffdfake\ufffd")]
    assert read_drops(location) == {}
    log = proxy.log()
    assert "please report" not in log and "write_error" not in log
    assert max(len(line) for line in log.splitlines()) < 1000


# -- bodies that would not fit in memory -----------------------------------------------------------

BOMB_PLAIN = 512 << 20  # bytes of JSON whitespace each bomb stands for


def _request_bomb(coding: str) -> bytes:
    """A chat request whose body, decompressed, is BOMB_PLAIN bytes: valid JSON, were it read."""
    head = json.dumps(BODY)[:-1].encode() + b', "padding": "'
    block, tail = b" " * (1 << 20), b'"}'
    blocks = BOMB_PLAIN >> 20
    if coding == "gzip":
        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(head) + b"".join(c.compress(block) for _ in range(blocks)) + c.compress(tail) + c.flush()
    if coding == "br":
        import brotli

        b = brotli.Compressor(quality=5)
        return b.process(head) + b"".join(b.process(block) for _ in range(blocks)) + b.process(tail) + b.finish()
    import zstandard

    z = zstandard.ZstdCompressor(level=3).compressobj()
    return z.compress(head) + b"".join(z.compress(block) for _ in range(blocks)) + z.compress(tail) + z.flush()


@pytest.mark.parametrize(("coding", "worker"), [("zstd", True), ("gzip", True), ("br", True), ("zstd", False)],
                         ids=["zstd", "gzip", "br", "zstd-in-mitmdumps-process"])
def test_a_request_body_bomb_is_recorded_by_its_path_in_bounded_memory_and_passed_on_byte_identical(
        start_proxy, upstream, coding, worker):
    body = _request_bomb(coding)
    assert len(body) < 2 << 20  # under the hooks' 2 MiB limit: it is handed to the metering
    proxy = start_proxy("--set", f"llm_metrics_worker={str(worker).lower()}")
    child = proxy.metering_pid()
    assert (child is not None) == worker
    with httpx.Client(proxy=proxy.url, timeout=60) as client:
        started = time.perf_counter()
        response = client.post(f"{upstream.base_url}/chat/completions", content=body,
                               headers={"content-type": "application/json", "content-encoding": coding})
        bomb_s = time.perf_counter() - started
        # The upstream got the body byte for byte (it cannot parse it, and says so); the client
        # got the upstream's answer byte for byte.
        assert upstream.served[0].raw == body
        assert (response.status_code, response.content) == (400, PARSE_ERROR)
        after = client.post(f"{upstream.base_url}/chat/completions", json=BODY)
        assert after.status_code == 200
    rows = proxy.rows(2)
    peaks = {"mitmdump": _peak_rss_mb(proxy.proc.pid)}
    if child is not None:
        peaks["metering"] = _peak_rss_mb(child)
    assert proxy.stop() == 0
    # Decoding the bomb whole took 3.2 GB; at most the 2 MiB request limit is decoded now.
    assert all(peak < 300 for peak in peaks.values()), peaks
    assert bomb_s < 5.0
    assert len(rows) == 2 and read_drops(proxy.db_path) == {}
    bomb = rows[0]
    assert (bomb["operation"], bomb["status_code"], bomb["error_type"]) == ("chat", 400, "invalid_request_error")
    assert bomb["request_model"] is None and bomb["model"] is None
    assert bomb["metering_note"] == "request body not read: it is larger than 2 MiB once decompressed"
    assert rows[1]["success"] and rows[1]["request_model"] == "gpt-fake"
    assert "please report" not in proxy.log()


# -- a request the client broke ---------------------------------------------------------------------


def test_a_request_whose_body_is_not_json_gets_a_row_with_the_upstreams_error_and_no_please_report(
        start_proxy, upstream):
    proxy = start_proxy()
    with httpx.Client(proxy=proxy.url, timeout=30) as client:
        broken = b'{"model": "gpt-fake", "messages": ['
        response = client.post(f"{upstream.base_url}/chat/completions", content=broken,
                               headers={"content-type": "application/json"})
        assert (response.status_code, response.content) == (400, PARSE_ERROR)
        assert upstream.served[0].raw == broken
    rows = proxy.rows(1)
    assert proxy.stop() == 0
    [row] = rows
    assert (row["operation"], row["status_code"], row["success"]) == ("chat", 400, 0)
    assert row["error_type"] == "invalid_request_error"
    assert row["metering_note"] == "request body is not valid JSON"
    log = proxy.log()
    assert "1 call(s) recorded" in log
    assert "not parsed" not in log and "please report" not in log
