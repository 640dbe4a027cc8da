"""The real Codex CLI (`@openai/codex`, pinned in tests/agents.py) through a real mitmdump to the fake
upstream of tests/ws_upstream.py, as a custom provider in `$HOME/.codex/config.toml`: its default
transport (the Responses API over a WebSocket, a warm-up first) and its HTTP fallback (SSE).

Codex is kept on loopback: its provider is the proxy on 127.0.0.1, and every other address it may
try (update checks, analytics) goes to a closed port through HTTP(S)_PROXY."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.agents import AGENTS, agent_bin, agent_env
from tests.ws_upstream import RESPONSES_MODEL, TEXT, WsUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # real agent CLIs from npm

CODEX_VERSION = AGENTS["codex"].rsplit("@", 1)[1]
DELAY_S = 0.3
RUN_TIMEOUT_S = 120
API_KEY = "sk-test-codex-DO-NOT-STORE-5e2d"
NOWHERE = "http://127.0.0.1:1"  # a closed port: every address but the proxy fails at once


def write_config(home: Path, base_url: str, websockets: bool) -> None:
    config = home / ".codex" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f"""\
model = "gpt-5-codex"
model_provider = "fake"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.fake]
name = "fake"
base_url = "{base_url}"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
supports_websockets = {str(websockets).lower()}
""")


def run_bounded(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The command in a process group of its own, ended whole (by its id) if it overruns."""
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"codex did not finish within {RUN_TIMEOUT_S} s: {err[-2000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.parametrize("websockets", [True, False], ids=["websocket", "sse"])
def test_codex_exec_main_call_is_one_row_with_the_upstreams_counts(tmp_path, start_proxy, websockets):
    codex = agent_bin("codex")
    with WsUpstream(first_token_delay=DELAY_S) as upstream:
        proxy = start_proxy("--mode", f"reverse:{upstream.url}")
        home, work = tmp_path / "home", tmp_path / "work"
        work.mkdir()
        write_config(home, f"{proxy.url}/v1", websockets)
        env = agent_env(home, OPENAI_API_KEY=API_KEY, HTTP_PROXY=NOWHERE, HTTPS_PROXY=NOWHERE, ALL_PROXY=NOWHERE,
                        NO_PROXY="127.0.0.1,localhost")
        result = run_bounded([str(codex), "exec", "--skip-git-repo-check", "say hi"], env, work)
        assert result.returncode == 0, result.stderr[-2000:]
        assert TEXT in result.stdout

        main = [turn for turn in upstream.turns if turn.scenario != "warmup"]
        rows = proxy.rows(len(main))
        # who made them: Codex names its session in x-codex-turn-metadata (on the WebSocket's upgrade,
        # or on each HTTP request), and each row carries the session id as Codex sent it
        sessions = {json.loads(s.headers["x-codex-turn-metadata"]).get("session_id") for s in upstream.served
                    if "x-codex-turn-metadata" in s.headers}
        assert len(sessions) == 1 and None not in sessions
        for row in rows:
            assert (row["agent"], row["agent_version"], row["session_id"]) == ("codex", CODEX_VERSION, *sessions)
            assert row["auth_mode"] == "api_key"
        assert {turn.kind for turn in upstream.turns} == {"responses-ws" if websockets else "responses-sse"}
        assert len(main) >= 1 and len(rows) == len(main)
        for row, turn in zip(rows, main):
            assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
                turn.input_tokens, turn.output_tokens, turn.cached_tokens)
            assert (row["success"], row["model"], row["request_model"], row["operation"]) == (
                1, RESPONSES_MODEL, "gpt-5-codex", "responses")
            assert (row["path"], row["origin"], row["is_streaming"], row["finish_reason"]) == (
                "/v1/responses", "codex_exec", 1, "completed")
            assert turn.first_content_at is not None
            truth_ms = (turn.first_content_at - turn.received_at) * 1000
            assert row["time_to_first_token_ms"] >= max(DELAY_S * 1000, truth_ms - 1)
            assert row["time_to_first_token_ms"] <= row["response_time_ms"]
        proxy.stop()
    log = proxy.log()
    warmups = sum(turn.scenario == "warmup" for turn in upstream.turns)
    assert warmups == (1 if websockets else 0)  # Codex warms a socket up, never an HTTP stream
    if warmups:
        assert f"{warmups} WebSocket warm-up request(s)" in log
    assert len(proxy.rows(len(main))) == len(main)  # the warm-up is no row, even after the stop
    assert API_KEY not in log and API_KEY.encode() not in proxy.db_path.read_bytes()
