"""The README's three ways in, run for real on loopback: a child process gets exactly the lines
`python -m addon env` printed (applied by bash), and the row must name the right provider and host.

Reverse mode targets real API hosts (api.openai.com, ...): a small test script loaded into mitmdump
plays /etc/hosts and resolves them to the fake upstream, so mitmproxy, the addon and the SDK all
see the real names and no packet leaves the machine. (Names only: asyncio connects to an IP
address without resolving it, so the targets here are names.)
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from addon.setup_env import this_machine
from tests.conftest import MITMDUMP, Proxy, free_port
from tests.test_newcomer_env import bash_applied, clean_env, printed_env
from tests.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

OPENAI_CHILD = """
import os, sys, openai
client = openai.OpenAI(api_key="sk-newcomer-test", max_retries=0, **({"base_url": sys.argv[1]} if len(sys.argv) > 1 else {}))
stream = client.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "Say hello"}],
                                        stream=True, stream_options={"include_usage": True})
print("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
"""

HOSTS_STUB = '''
"""Test-only /etc/hosts for mitmdump: these (host, port) pairs resolve to the fake upstream."""
import socket

_real_getaddrinfo = socket.getaddrinfo
_MAP = {MAP}


def _getaddrinfo(host, port, *args, **kwargs):
    target = _MAP.get((host, int(port) if port is not None else None))
    if target is not None:
        return _real_getaddrinfo(target[0], target[1], *args, **kwargs)
    return _real_getaddrinfo(host, port, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo
'''


def run_child(code: str, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout)


def start_command_args(lines: str) -> list[str]:
    """The mitmdump arguments of the printed `Start the proxy: python3 dev.py run ...` line."""
    line = next(candidate for candidate in lines.splitlines() if candidate.startswith("# Start the proxy: python3 dev.py run"))
    return line.split("python3 dev.py run", 1)[1].split()


@pytest.fixture
def proxies(tmp_path):
    """Proxies started with the printed arguments; each may listen on its mode's own port."""
    started: list[Proxy] = []

    def start(*args: str, port: int | None = None) -> Proxy:
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        proxy = Proxy(workdir, *args, wait=False)
        started.append(proxy)
        if port is not None:
            proxy.port = port  # `--mode reverse:...@PORT` listens there instead
        proxy.wait_ready()
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


# -- reverse mode ----------------------------------------------------------------------


@pytest.mark.parametrize(("upstream", "tls", "provider", "host"), [
    ("https://api.openai.com", True, "openai", "api.openai.com"),
    ("http://localhost:11434", False, "ollama", "localhost"),  # Ollama's port
    ("http://localhost:8000", False, "openai-compatible", "localhost"),  # a vLLM server
])
def test_reverse_mode_with_the_printed_base_url_records_the_upstreams_provider_and_host(
        proxies, tmp_path, upstream, tls, provider, host):
    port = free_port()
    lines = printed_env("--mode", "reverse", "--upstream", upstream, "--port", str(port))
    with FakeUpstream(tls_dir=tmp_path if tls else None) as fake:
        name, _, target_port = upstream.split("://")[1].partition(":")
        stub = tmp_path / "hosts_stub.py"
        stub.write_text(HOSTS_STUB.replace("{MAP}", repr({(name, int(target_port or 443)): ("127.0.0.1", fake.port)})))
        proxy = proxies(*start_command_args(lines), "-s", str(stub), "--set", "ssl_insecure=true", port=port)
        child = run_child(OPENAI_CHILD, bash_applied(lines))  # the SDK reads OPENAI_BASE_URL
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip() == "Hello from the fake upstream."
        [row] = proxy.rows(1)
    assert (row["provider"], row["host"], row["path"]) == (provider, host, "/v1/chat/completions")
    assert (row["status_code"], row["success"], row["origin"]) == (200, 1, "OpenAI/Python")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 6)
    assert row["time_to_first_token_ms"] is not None
    assert fake.last().headers["host"].split(":")[0] == host  # mitmproxy rewrote Host for the upstream


# -- forward mode ----------------------------------------------------------------------


@pytest.fixture
def forward(proxies, tls_upstream):
    """A forward proxy (ssl_insecure for the self-signed upstream) and the environment its
    printed lines give a new shell."""
    proxy = proxies("--set", "ssl_insecure=true")
    lines = printed_env("--mode", "forward", "--confdir", str(proxy.confdir), "--port", str(proxy.port))
    return proxy, bash_applied(lines), tls_upstream


def test_forward_mode_python_openai_sdk_over_https_trusts_the_ca_through_the_printed_lines(forward):
    proxy, env, upstream = forward
    child = run_child(OPENAI_CHILD, env, upstream.base_url)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "Hello from the fake upstream."
    [row] = proxy.rows(1)
    assert (row["provider"], row["host"], row["status_code"], row["origin"]) == ("openai-compatible", "127.0.0.1", 200, "OpenAI/Python")
    assert (row["completion_tokens"], row["finish_reason"]) == (6, "stop")


def test_forward_mode_without_the_lines_fails_the_certificate_check(forward):
    proxy, env, upstream = forward
    untrusting = {**clean_env(), "HTTPS_PROXY": env["HTTPS_PROXY"]}  # the proxy but not the CA
    child = run_child(OPENAI_CHILD, untrusting, upstream.base_url)
    assert child.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in child.stderr or "certificate verify failed" in child.stderr


REQUESTS_CHILD = """
import sys, requests
reply = requests.post(sys.argv[1] + "/chat/completions", json={"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]})
print(reply.json()["choices"][0]["message"]["content"])
"""


def test_forward_mode_python_requests_trusts_the_ca_through_the_printed_lines(forward):
    pytest.importorskip("requests")
    proxy, env, upstream = forward
    child = run_child(REQUESTS_CHILD, env, upstream.base_url)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "Hello from the fake upstream."
    assert proxy.rows(1)[0]["origin"] == "python-requests"


def test_forward_mode_curl_trusts_the_ca_through_the_printed_lines(forward):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed here")
    proxy, env, upstream = forward
    body = json.dumps({"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]})
    result = subprocess.run(["curl", "-sS", "--fail", f"{upstream.base_url}/chat/completions",
                             "-H", "content-type: application/json", "-d", body],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["choices"][0]["message"]["content"] == "Hello from the fake upstream."
    [row] = proxy.rows(1)
    assert (row["origin"], row["status_code"], row["prompt_tokens"]) == ("curl", 200, 11)


NODE_CHILD = r"""
// Node's TLS through HTTPS_PROXY, tunnelled by hand (Node before 22.21 has no NODE_USE_ENV_PROXY):
// the handshake inside trusts the CAs Node knows, NODE_EXTRA_CA_CERTS included.
const http = require("http"), tls = require("tls");
const fail = (err) => { console.error(err.message); process.exit(1); };
const proxy = new URL(process.env.HTTPS_PROXY), target = new URL(process.argv[1] + "/chat/completions");
const body = JSON.stringify({model: "gpt-fake", messages: [{role: "user", content: "hi"}]});
http.request({host: proxy.hostname, port: proxy.port, method: "CONNECT", path: target.host}).on("error", fail)
  .on("connect", (res, socket) => {
    const secure = tls.connect({socket, host: target.hostname}, () => {
      secure.write(`POST ${target.pathname} HTTP/1.1\r\nHost: ${target.host}\r\nUser-Agent: node\r\n` +
                 `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
                 `Connection: close\r\n\r\n${body}`);
    }).on("error", fail);
    let text = "";
    secure.on("data", (chunk) => { text += chunk; });
    secure.on("end", () => {
      console.log(JSON.parse(text.split("\r\n\r\n")[1]).choices[0].message.content);
      process.exit(0);
    });
  }).end();
"""


def test_forward_mode_node_trusts_the_ca_through_the_printed_lines(forward):
    if shutil.which("node") is None:
        pytest.skip("node is not installed here")
    proxy, env, upstream = forward
    result = subprocess.run(["node", "-e", NODE_CHILD, upstream.base_url], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Hello from the fake upstream."
    assert proxy.rows(1)[0]["origin"] == "node"
    untrusting = {**env, "NODE_EXTRA_CA_CERTS": ""}
    failed = subprocess.run(["node", "-e", NODE_CHILD, upstream.base_url], env=untrusting, capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1 and "certificate" in failed.stderr


# -- local capture mode ----------------------------------------------------------------


# What mitmproxy prints when a requirement the README lists is missing, by requirement.
LOCAL_MODE_REFUSALS = {
    "mitmproxy": "OS proxy mode is only available on Windows and macOS",
    "sudo": "Failed to run sudo",
}


def test_local_mode_stops_at_start_for_the_reason_env_predicts(tmp_path):
    machine = this_machine()
    if machine.system != "Linux":
        pytest.skip("the documented limits are Linux's")
    old_mitmproxy = tuple(int(p) for p in machine.mitmproxy.split(".")[:2]) < (11, 1)
    if not old_mitmproxy and machine.sudo:
        pytest.skip("this machine meets local mode's requirements: its capture is not exercised here")
    lines = printed_env("--mode", "local", "--app", "curl", "--confdir", str(tmp_path / "confdir"))
    assert "use reverse or forward mode" in lines
    args = start_command_args(lines)
    log = tmp_path / "mitmdump.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(MITMDUMP), "-s", str(Path(__file__).parents[1] / "addon" / "llm_metrics.py"),
                                 "--set", f"confdir={tmp_path / 'confdir'}", "--set", f"llm_metrics_db={tmp_path / 'm.db'}",
                                 *args], stdout=out, stderr=subprocess.STDOUT, env=clean_env())
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            pytest.fail(f"mitmdump --mode local:curl kept running although env said it cannot:\n{log.read_text()}")
    expected = LOCAL_MODE_REFUSALS["mitmproxy" if old_mitmproxy else "sudo"]
    assert expected in log.read_text(errors="replace")
    assert "Error logged during startup" in log.read_text(errors="replace")
