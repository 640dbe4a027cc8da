"""The README's command blocks, run as written in fresh shells with an empty home: set up, start the
proxy, send an app's call through it, see the report and the dashboard. The blocks are read from
README.md itself, so the two cannot drift. What a test must change, it changes in the open:

- `python3 dev.py test` gets `--co -q` (it installs everything and collects the suite; running the
  suite inside the suite would recurse);
- port 8080 and 8321 become free ports (another proxy may hold them);
- `my_app.py` is a small app calling the fake upstream with the openai SDK.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MY_APP = """\
import os
import openai

client = openai.OpenAI(base_url=os.environ["UPSTREAM_URL"], api_key="sk-readme-test", max_retries=0)
reply = client.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "hi"}])
print(reply.choices[0].message.content)
"""


def blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.S)


def block_with(text: str) -> str:
    found = [b for b in blocks() if text in b]
    assert len(found) == 1, f"the README should have one sh block with {text!r}"
    return found[0]


def fresh_env(home: Path, **extra: str) -> dict[str, str]:
    """A new login's environment: an empty home, no proxy variables, no virtualenv active."""
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "dumb"}
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    if Path(pyenv, "shims").is_dir():  # where this machine's python3 comes from
        env["PATH"] = f"{pyenv}/shims:{pyenv}/bin:{env['PATH']}"
        env["PYENV_ROOT"] = pyenv
    return {**env, **extra}


def shell(script: str, env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def background(script: str, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(["bash", "-c", script], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def test_the_readme_commands_work_as_written_in_a_fresh_shell(tmp_path):
    home, work = tmp_path / "home", tmp_path / "app"
    home.mkdir()
    work.mkdir()
    env = fresh_env(home)
    setup = block_with(". .venv/bin/activate")
    activate = next(line.split("#")[0].strip() for line in setup.splitlines() if "activate" in line)
    activate_anywhere = activate.replace(".venv", str(ROOT / ".venv"))

    # Set up: both lines, as written (the test run collects the suite instead of running it).
    done = shell(setup.replace("python3 dev.py test ", "python3 dev.py test --co -q ")
                 + "\ncommand -v mitmdump llm-metrics-report", env, ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(ROOT / ".venv" / "bin" / "mitmdump") in done.stdout

    # The proxy, as the README starts it, on a free port.
    proxy_port, serve_port = free_port(), free_port()
    start = block_with("mitmdump -s addon/llm_metrics.py").strip()
    proxy = background(f"{activate}\nexec {start} --listen-port {proxy_port}", env, ROOT, tmp_path / "proxy.log")
    serve = None
    try:
        wait_for(lambda: (home / ".mitmproxy" / "mitmproxy-ca-cert.pem").exists()
                 and "recording LLM calls" in (tmp_path / "proxy.log").read_text(errors="replace"), "the proxy")
        # The app's shell: the README's lines, the app a small openai SDK client of the fake upstream.
        (work / "my_app.py").write_text(MY_APP)
        app = block_with("python my_app.py").replace("127.0.0.1:8080", f"127.0.0.1:{proxy_port}")
        with FakeUpstream() as upstream:
            done = shell(f"{activate_anywhere}\n{app}", {**env, "UPSTREAM_URL": upstream.base_url}, work, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Hello from the fake upstream." in done.stdout
        database = home / ".llm_metrics_proxy" / "metrics.db"
        wait_for(lambda: database.exists() and _rows(database) == 1, "the row")
        assert "llm openai-compatible gpt-fake-2026-01-01 200" in (tmp_path / "proxy.log").read_text()

        # The report, and the dashboard.
        report, dashboard = [line.split("#")[0].strip() for line in block_with("python -m reports").splitlines()
                             if line.strip()]
        done = shell(f"{activate}\n{report}", {**env, "COLUMNS": "120"}, ROOT, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "1 requests" in done.stdout and "gpt-fake-2026-01-01" in done.stdout
        serve = background(f"{activate}\nexec {dashboard} --port {serve_port}", env, ROOT, tmp_path / "serve.log")
        wait_for(lambda: _health(serve_port), "the dashboard")
        with urllib.request.urlopen(f"http://127.0.0.1:{serve_port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        stop(proxy)
        if serve is not None:
            stop(serve)


def _rows(database: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            return con.execute("SELECT count(*) FROM completion_requests").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_the_readme_is_a_quickstart():
    assert len(README.encode()) < 10_000
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).exists(), link
