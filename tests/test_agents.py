"""addon/agents.py: the agent, its session, subagent, retry and credential kind, from request headers
shaped as each agent sends them (the agents' own values where tests/test_e2e_agents*.py saw them)."""

from __future__ import annotations

import json

import pytest

from addon.agents import AGENT_HEADERS, API_KEY, NO_AUTH, OAUTH, Identity, auth_mode, identify

SESSION = "8a3f2c1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"

CASES = [
    pytest.param(
        {"user-agent": "claude-cli/2.1.332 (external, cli)", "x-app": "cli", "x-claude-code-session-id": SESSION},
        None, Identity("claude-code", "2.1.332", SESSION), id="claude-code"),
    pytest.param(
        {"user-agent": "claude-cli/2.1.332 (external, sdk-cli)", "x-claude-code-session-id": SESSION,
         "x-claude-code-agent-id": "agent-7", "x-claude-code-parent-agent-id": "agent-1"},
        None, Identity("claude-code", "2.1.332", SESSION, "agent-7", "agent-1"), id="claude-code-subagent"),
    pytest.param(
        {"user-agent": "claude-cli/1.0.80 (external, cli)"},
        {"metadata": {"user_id": f"user_0f9e_account_1234abcd-0000-0000-0000-000000000000_session_{SESSION}"}},
        Identity("claude-code", "1.0.80", SESSION), id="claude-code-legacy-user-id"),
    pytest.param(
        {"user-agent": "claude-cli/2.0.1 (external, cli)"},
        {"metadata": {"user_id": json.dumps({"device_id": "d1", "account_uuid": "a1", "session_id": SESSION})}},
        Identity("claude-code", "2.0.1", SESSION), id="claude-code-json-user-id"),
    pytest.param(
        {"user-agent": "codex_exec/0.171.0 (Debian 12; x86_64) xterm", "originator": "codex_exec",
         "x-codex-turn-metadata": json.dumps({"session_id": SESSION, "thread_id": "t-1", "turn_id": "u-2",
                                             "request_kind": "turn"})},
        None, Identity("codex", "0.171.0", SESSION, request_kind="turn"), id="codex-turn"),
    pytest.param(
        {"user-agent": "codex_cli_rs/0.171.0 (Mac OS 15.1; arm64)", "originator": "codex_cli_rs",
         "x-codex-turn-metadata": '{"thread_id":"t-9","request_kind":"prewarm"}',
         "x-openai-subagent": "review", "x-codex-parent-thread-id": "t-0"},
        None, Identity("codex", "0.171.0", "t-9", "review", "t-0", "prewarm"), id="codex-subagent-prewarm"),
    pytest.param(
        {"originator": "codex_exec", "user-agent": "reqwest"},
        None, Identity("codex"), id="codex-by-originator"),
    pytest.param(
        {"user-agent": "GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64) google-genai-sdk/1.30.0"},
        {"model": "gemini-2.5-pro", "project": "p", "user_prompt_id": f"{SESSION}########3", "request": {}},
        Identity("gemini-cli", "0.61.0", SESSION), id="gemini-cli-code-assist"),
    pytest.param(
        {"user-agent": "GeminiCLI-tui/0.61.0/gemini-2.5-pro (linux; x64; terminal) google-api-nodejs-client/10.9.0"},
        {"model": "gemini-2.5-pro", "project": "p", "user_prompt_id": SESSION, "request": {}},
        Identity("gemini-cli", "0.61.0", SESSION), id="gemini-cli-code-assist-one-shot"),
    pytest.param(
        {"user-agent": "GeminiCLI-tui/0.61.0/gemini-2.5-flash (linux; x64)"},
        None, Identity("gemini-cli", "0.61.0"), id="gemini-cli-tui"),
    pytest.param(
        {"user-agent": "OpenAI/Python 1.109.1", "x-stainless-lang": "python",
         "x-stainless-package-version": "1.109.1", "x-stainless-retry-count": "2"},
        None, Identity("openai-python", "1.109.1", retry_count=2), id="openai-python-retry"),
    pytest.param(
        {"user-agent": "Anthropic/Python 0.69.0", "x-stainless-retry-count": "0"},
        None, Identity("anthropic-python", "0.69.0", retry_count=0), id="anthropic-python"),
    pytest.param(
        {"user-agent": "OpenAI/JS 5.1.0", "x-stainless-retry-count": "1"},
        None, Identity("openai-node", "5.1.0", retry_count=1), id="openai-node"),
    pytest.param({"user-agent": "litellm/1.77.0"}, None, Identity("litellm", "1.77.0"), id="litellm"),
    pytest.param({"user-agent": "aider/0.86.1"}, None, Identity("aider", "0.86.1"), id="aider"),
    pytest.param({"user-agent": "OpenAI/Python 1.99.0", "x-title": "Aider"}, None, Identity("aider"),
                 id="aider-by-title"),
    pytest.param({"user-agent": "opencode/0.15.2"}, None, Identity("opencode", "0.15.2"), id="opencode"),
    pytest.param({"user-agent": "QwenCode/0.2.1 (linux; x64)"}, None, Identity("qwen-code", "0.2.1"), id="qwen-code"),
    pytest.param({"user-agent": "curl/8.5.0"}, None, Identity("curl", "8.5.0"), id="curl"),
    pytest.param({"user-agent": "Mozilla/5.0 (X11)"}, None, Identity(), id="unknown"),
    pytest.param({}, None, Identity(), id="no-headers"),
]


@pytest.mark.parametrize(("headers", "body", "expected"), CASES)
def test_identify_names_the_agent_and_its_ids(headers, body, expected):
    assert identify(headers, body) == expected


def test_identify_keeps_the_auth_kind_it_is_given():
    assert identify({"user-agent": "curl/8"}, None, OAUTH).auth_mode == OAUTH


@pytest.mark.parametrize(("fields", "query_key", "expected"), [
    ([(b"x-api-key", b"sk-ant-api03-xyz")], False, API_KEY),
    ([(b"Authorization", b"Bearer sk-proj-abc")], False, API_KEY),
    ([(b"authorization", b"Bearer sk-ant-oat01-abc"), (b"anthropic-beta", b"claude-code-20250219,oauth-2025-04-20")],
     False, OAUTH),
    ([(b"authorization", b"Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"), (b"chatgpt-account-id", b"acc")], False, OAUTH),
    ([(b"authorization", b"Bearer ya29.a0AfB_xyz")], False, OAUTH),
    ([(b"x-goog-api-key", b"AIza-xyz")], False, API_KEY),
    ([(b"api-key", b"azure-key")], False, API_KEY),
    ([], True, API_KEY),
    ([(b"content-type", b"application/json")], False, NO_AUTH),
    ([(b"anthropic-beta", b"oauth-2025-04-20")], False, NO_AUTH),  # the marker alone is no credential
])
def test_auth_mode_tells_the_kind_never_the_value(fields, query_key, expected):
    mode = auth_mode(tuple(fields), query_key)
    assert mode == expected
    for _, value in fields:
        assert value.decode() not in mode


def test_no_kept_header_can_carry_a_credential():
    assert not AGENT_HEADERS & {b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key", b"cookie",
                                b"proxy-authorization", b"chatgpt-account-id"}


def test_hostile_values_are_bounded_and_never_raise():
    huge = "x" * 100_000
    identity = identify({"user-agent": "claude-cli/" + huge, "x-claude-code-session-id": huge,
                         "x-stainless-retry-count": "99999999999999999999"}, {"metadata": {"user_id": 7}})
    assert identity.agent == "claude-code"
    assert identity.agent_version is None  # not a version
    assert identity.session_id is not None and len(identity.session_id) == 2000
    assert identity.retry_count is None
    assert identify({"x-codex-turn-metadata": "{not json", "originator": "codex_exec"}).session_id is None
    assert identify({"x-codex-turn-metadata": "[1,2]", "originator": "codex_exec"}).request_kind is None
