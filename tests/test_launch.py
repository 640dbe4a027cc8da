"""`llm-metrics-proxy` (addon/launch.py) and `python -m addon path`: the proxy started from any directory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from addon.launch import SCRIPT, mitmdump_args
from tests.clients import httpx
from tests.conftest import ADDON, MITMDUMP, free_port, read_rows, wait_until


def test_defaults_are_loopback_and_no_per_request_lines():
    assert mitmdump_args(["--listen-port", "9090"]) == [
        "--listen-host", "127.0.0.1", "--set", "flow_detail=0", "-s", str(ADDON), "--listen-port", "9090"]


@pytest.mark.parametrize("given", [["--listen-host", "0.0.0.0"], ["--listen-host=::"]])
def test_a_listen_host_given_is_kept_alone(given):
    args = mitmdump_args(given)
    assert args.count("127.0.0.1") == 0 and args[-len(given):] == given


@pytest.mark.parametrize("given", [["--set", "flow_detail=2"], ["--flow-detail", "1"]])
def test_a_flow_detail_given_is_the_only_one(given):
    args = mitmdump_args(given)
    assert "flow_detail=0" not in args and args[-len(given):] == given


def test_addon_path_prints_the_script_mitmdump_loads():
    result = subprocess.run([sys.executable, "-m", "addon", "path"], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0 and result.stdout == f"{SCRIPT}\n"
    assert SCRIPT == ADDON  # the checkout's own, as the editable install makes it


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["llm-metrics-proxy", "mitmdump -s $(python -m addon path)"])
def test_the_proxy_records_a_call_when_started_from_another_directory(tmp_path, upstream, how):
    port = free_port()
    options = ["--listen-port", str(port), "--set", f"confdir={tmp_path / 'c'}", "--set", f"llm_metrics_db={tmp_path / 'm.db'}"]
    if how == "llm-metrics-proxy":
        args = [sys.executable, "-m", "addon.launch", *options]
    else:
        args = [str(MITMDUMP), "--listen-host", "127.0.0.1", "-s", str(SCRIPT), *options]
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        assert wait_until(lambda: proc.poll() is not None or "recording LLM calls" in log.read_text(), timeout=30)
        assert proc.poll() is None, log.read_text()
        body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
        client = httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False)
        assert client.post(f"{upstream.base_url}/chat/completions", json=body).status_code == 200
        assert wait_until(lambda: len(read_rows(tmp_path / "m.db")) == 1)
    finally:
        proc.terminate()
        proc.wait(30)
    assert read_rows(tmp_path / "m.db")[0]["success"] == 1
