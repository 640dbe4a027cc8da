"""The real agent CLIs from npm (tests/agents.py: pinned, installed into a cache outside the repo)
through a real mitmdump in reverse mode to a fake upstream on 127.0.0.1 (tests/agent_upstream.py).

Claude Code (`claude -p`, `ANTHROPIC_BASE_URL`) and Gemini CLI (`gemini -p`, API-key mode with
`GOOGLE_GEMINI_BASE_URL`, and signed in to Code Assist with `CODE_ASSIST_ENDPOINT`) each make one
streamed main call, and may make side calls (Gemini CLI
routes with `:generateContent` first; Claude Code may count tokens or check its quota): the
main call is one row with the upstream's counts and a time to first token no earlier than the
upstream's delay, every side call that is a generation is a row of its own with the counts it
was answered with, and nothing else is (count_tokens, `HEAD /`). No agent reaches anything but
127.0.0.1: their telemetry, update checks and usage statistics are switched off, and Gemini CLI
runs with tests/node_local_only.cjs, which refuses any other address (signed in, it looks its
user up at www.googleapis.com).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests import agent_upstream as up
from tests.agent_upstream import AgentUpstream
from tests.agents import AGENTS, agent_bin, agent_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # real agent CLIs from npm

DELAY_S = 0.4  # the upstream's wait before the main call's first token
RUN_TIMEOUT_S = 120
API_KEY = "sk-ant-test-DO-NOT-STORE-4d2e"  # a dummy: the fake upstream accepts anything
GEMINI_KEY = "AIzaSyDummyKeyDoNotStore0000000000000000"
ACCESS_TOKEN = "ya29.dummy-DO-NOT-STORE-0c1d"  # a Google account's OAuth access token, as Gemini CLI sends it
# Paths of the calls that are generations (rows); count_tokens / countTokens are not.
GENERATIONS = ("/messages", ":generateContent", ":streamGenerateContent")
LOCAL_ONLY = Path(__file__).with_name("node_local_only.cjs")


@pytest.fixture
def upstream():
    with AgentUpstream(first_token_delay=DELAY_S, chunk_delay=0.02) as server:
        yield server


def run_agent(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def generations(upstream: AgentUpstream) -> list:
    return [s for s in upstream.served if s.path.split("?", 1)[0].endswith(GENERATIONS)]


def rows_for(proxy, upstream: AgentUpstream) -> tuple[dict, list[dict], object]:
    """The main call's row, the side calls' rows, and the main call as the upstream saw it; every
    generation the agent asked for is one row, and there is no other."""
    calls = generations(upstream)
    rows = proxy.rows(len(calls))
    assert len(rows) == len(calls), ([s.path for s in upstream.served], [r["path"] for r in rows])
    [main_call] = [s for s in calls if s.first_content_at is not None]  # the one streamed answer
    [main] = [r for r in rows if r["is_streaming"]]
    side = [r for r in rows if not r["is_streaming"]]
    assert sorted(r["path"] for r in side) == sorted(s.path.split("?", 1)[0] for s in calls if s is not main_call)
    return main, side, main_call


def assert_main_timing(row: dict, served) -> None:
    """The proxy saw the request before the upstream did, and the first token after the upstream
    waited DELAY_S and sent it: its time to first token is no less (rows keep whole ms)."""
    assert served.first_content_at - served.received_at >= DELAY_S
    assert row["time_to_first_token_ms"] >= DELAY_S * 1000 - 1, row["time_to_first_token_ms"]
    assert row["time_to_first_token_ms"] < row["time_to_last_token_ms"] <= row["response_time_ms"]
    assert (row["success"], row["status_code"], row["error_type"], row["finish_category"]) == (1, 200, None, "stop")


def assert_side_rows(rows: list[dict], *, completion_tokens: int) -> None:
    for row in rows:
        assert (row["success"], row["status_code"], row["error_type"], row["usage_source"]) == (1, 200, None, "reported")
        assert (row["prompt_tokens"], row["completion_tokens"]) == (up.SIDE_PROMPT_TOKENS, completion_tokens)
        assert (row["time_to_first_token_ms"], row["tokens_per_second"], row["chunk_count"]) == (None, None, None)


def assert_no_secret(proxy, *secrets: str) -> None:
    stored = json.dumps(proxy.rows(0))
    log = proxy.log()
    for secret in secrets:
        assert secret not in stored and secret not in log


# --- Claude Code ----------------------------------------------------------------------------------


def test_claude_code_main_call_is_one_row_with_the_upstreams_counts_and_delay(start_proxy, upstream, tmp_path):
    claude = agent_bin("claude")
    proxy = start_proxy("--mode", f"reverse:{upstream.url}")
    env = agent_env(tmp_path / "home", ANTHROPIC_BASE_URL=proxy.url, ANTHROPIC_API_KEY=API_KEY,
                    DISABLE_TELEMETRY="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    result = run_agent([str(claude), "-p", "say hi"], env, tmp_path / "work")
    assert result.returncode == 0, result.stderr[-2000:]
    assert up.TEXT in result.stdout
    main, side, served = rows_for(proxy, upstream)
    assert served.path.startswith("/v1/messages")
    assert (main["provider"], main["host"], main["path"], main["operation"]) == (
        "anthropic-compatible", "127.0.0.1", "/v1/messages", "messages")
    assert main["origin"] == "claude-cli"
    assert (main["model"], main["request_model"]) == (up.ANTHROPIC_MODEL, served.body["model"])
    assert (main["prompt_tokens"], main["cached_tokens"], main["cache_creation_tokens"], main["completion_tokens"],
            main["total_tokens"], main["usage_source"], main["finish_reason"]) == (
        up.MAIN_PROMPT_TOKENS, up.MAIN_CACHE_READ_TOKENS, up.MAIN_CACHE_WRITE_TOKENS, up.MAIN_OUTPUT_TOKENS,
        up.MAIN_PROMPT_TOKENS + up.MAIN_OUTPUT_TOKENS, "reported", "end_turn")
    assert main["cost_usd"] is None  # a server of no known name is never priced
    # who made it: the session id is the one Claude Code sent in its header
    assert (main["agent"], main["agent_version"], main["auth_mode"]) == ("claude-code", version("claude"), "api_key")
    assert served.headers["x-claude-code-session-id"] and main["session_id"] == served.headers["x-claude-code-session-id"]
    assert_main_timing(main, served)
    assert_side_rows(side, completion_tokens=up.SIDE_OUTPUT_TOKENS)
    assert_no_secret(proxy, API_KEY)


# --- Gemini CLI -----------------------------------------------------------------------------------


def version(agent: str) -> str:
    """The pinned version of an agent (tests/agents.py), as its User-Agent says it."""
    return AGENTS[agent].rsplit("@", 1)[1]


def gemini_home(home: Path, auth: str = "gemini-api-key") -> Path:
    """Its way of signing in, and nothing sent anywhere but the base URL (usage statistics go to Google)."""
    settings = {"security": {"auth": {"selectedType": auth}},
                "privacy": {"usageStatisticsEnabled": False},
                "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False}}
    (home / ".gemini").mkdir(parents=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    return home


def test_gemini_cli_main_call_is_one_row_and_its_routing_calls_are_rows_of_their_own(start_proxy, upstream, tmp_path):
    gemini = agent_bin("gemini")
    proxy = start_proxy("--mode", f"reverse:{upstream.url}")
    env = agent_env(gemini_home(tmp_path / "home"), GEMINI_API_KEY=GEMINI_KEY, GOOGLE_GEMINI_BASE_URL=proxy.url,
                    GEMINI_CLI_TRUST_WORKSPACE="true", NODE_OPTIONS=f"--require={LOCAL_ONLY}")
    result = run_agent([str(gemini), "-p", "say hi"], env, tmp_path / "work")
    assert result.returncode == 0, result.stderr[-2000:]
    assert up.TEXT in result.stdout
    main, side, served = rows_for(proxy, upstream)
    path = served.path.split("?", 1)[0]
    assert path.endswith(":streamGenerateContent") and "alt=sse" in served.path
    requested = path.rsplit("/", 1)[-1].split(":", 1)[0]  # the model Gemini CLI routed the turn to
    assert (main["provider"], main["host"], main["path"], main["operation"]) == (
        "gemini-compatible", "127.0.0.1", path, "generate_content")
    assert main["origin"].startswith("GeminiCLI")
    assert (main["agent"], main["agent_version"], main["auth_mode"]) == ("gemini-cli", version("gemini"), "api_key")
    assert (main["model"], main["request_model"]) == (up.GEMINI_MODEL, requested)
    completion = up.MAIN_OUTPUT_TOKENS + up.MAIN_THOUGHT_TOKENS  # thoughts are output too
    assert (main["prompt_tokens"], main["cached_tokens"], main["completion_tokens"], main["reasoning_tokens"],
            main["total_tokens"], main["usage_source"], main["finish_reason"], main["chunk_count"]) == (
        up.MAIN_PROMPT_TOKENS, up.MAIN_CACHE_READ_TOKENS, completion, up.MAIN_THOUGHT_TOKENS,
        up.MAIN_PROMPT_TOKENS + completion, "reported", "STOP", len(up.WORDS))
    assert_main_timing(main, served)
    # Its routing asks a small model first, for JSON: a generation, stored as one.
    assert side and all(r["path"].endswith(":generateContent") for r in side)
    assert_side_rows(side, completion_tokens=up.SIDE_OUTPUT_TOKENS)
    assert {r["provider"] for r in side} == {"gemini-compatible"}
    assert_no_secret(proxy, GEMINI_KEY)


def test_gemini_cli_signed_in_to_code_assist_is_metered_through_its_envelope(start_proxy, upstream, tmp_path):
    """Signed in with a Google account Gemini CLI calls Code Assist (`/v1internal:…`): set-up calls
    (loadCodeAssist, retrieveUserQuota, listExperiments) are no rows, its routing and main calls are."""
    gemini = agent_bin("gemini")
    proxy = start_proxy("--mode", f"reverse:{upstream.url}")
    env = agent_env(gemini_home(tmp_path / "home", auth="oauth-personal"), CODE_ASSIST_ENDPOINT=proxy.url,
                    GOOGLE_GENAI_USE_GCA="true", GOOGLE_CLOUD_ACCESS_TOKEN=ACCESS_TOKEN,
                    GEMINI_CLI_TRUST_WORKSPACE="true", NODE_OPTIONS=f"--require={LOCAL_ONLY}")
    result = run_agent([str(gemini), "-p", "say hi"], env, tmp_path / "work")
    assert result.returncode == 0, result.stderr[-2000:]
    assert up.TEXT in result.stdout
    assert any(s.path == "/v1internal:loadCodeAssist" for s in upstream.served)  # it did sign in to Code Assist
    main, side, served = rows_for(proxy, upstream)
    assert served.path == "/v1internal:streamGenerateContent?alt=sse"
    assert (served.body["project"], served.body["request"]["contents"][-1]["role"]) == (up.CODE_ASSIST_PROJECT, "user")
    assert (main["provider"], main["host"], main["path"], main["operation"]) == (
        "gemini-code-assist-compatible", "127.0.0.1", "/v1internal:streamGenerateContent", "generate_content")
    assert (main["model"], main["request_model"]) == (up.GEMINI_MODEL, served.body["model"])
    assert (main["agent"], main["agent_version"], main["auth_mode"]) == ("gemini-cli", version("gemini"), "oauth")
    assert main["session_id"] == served.body["user_prompt_id"]  # a one-shot run sends its session's id
    completion = up.MAIN_OUTPUT_TOKENS + up.MAIN_THOUGHT_TOKENS
    assert (main["prompt_tokens"], main["cached_tokens"], main["completion_tokens"], main["reasoning_tokens"],
            main["usage_source"], main["finish_reason"], main["chunk_count"], main["cost_usd"]) == (
        up.MAIN_PROMPT_TOKENS, up.MAIN_CACHE_READ_TOKENS, completion, up.MAIN_THOUGHT_TOKENS,
        "reported", "STOP", len(up.WORDS), None)
    assert_main_timing(main, served)
    assert side and all(r["path"] == "/v1internal:generateContent" for r in side)
    assert_side_rows(side, completion_tokens=up.SIDE_OUTPUT_TOKENS)
    assert_no_secret(proxy, ACCESS_TOKEN)
