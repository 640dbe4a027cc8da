"""addon.redact: every key shape, masked echo and marker is taken out of a text; the words
around it, and texts without secrets, are kept as they were."""

from __future__ import annotations

import pytest

from addon.redact import redact, redact_path


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        pytest.param("Incorrect API key provided: sk-abc***...wxyz. You can find your API key at "
                     "https://platform.openai.com/account/api-keys.", "wxyz",
                     "You can find your API key at https://platform.openai.com/account/api-keys.",
                     id="openai-masked-echo"),
        pytest.param("Incorrect API key provided: sk-proj-****************************************Q7xZ.",
                     "Q7xZ", "Incorrect API key provided:", id="openai-project-masked-echo"),
        pytest.param("key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789 rejected", "abcdefghijklmnop", "rejected",
                     id="openai-project-key"),
        pytest.param("bad key sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv-xyz", "AbCdEfGhIj", "bad key", id="anthropic"),
        pytest.param("sk-or-v1-0123456789abcdef0123456789abcdef", "0123456789abcdef", "", id="openrouter"),
        pytest.param("API key AIzaSyD-planted_0123456789abcdefghijk invalid", "AIzaSyD", "invalid", id="google"),
        pytest.param("token ya29.a0AfH6SMBplanted0123456789", "ya29.a0AfH6", "", id="google-oauth"),
        pytest.param("The security token AKIAIOSFODNN7EXAMPLE is invalid", "AKIAIOSFODNN7EXAMPLE", "is invalid",
                     id="aws-access-key-id"),
        pytest.param("session ASIAY34FZKBOKMUTVV7A expired", "ASIAY34FZKBOKMUTVV7A", "expired", id="aws-session-key-id"),
        pytest.param("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY rest", "K7MDENG", "rest",
                     id="aws-secret-after-marker"),
        pytest.param('{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}', "K7MDENG",
                     '{"SecretAccessKey": "***"}', id="aws-secret-json"),
        pytest.param("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, "
                     "SignedHeaders=host, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
                     "5d672d79c15b", "SignedHeaders=host", id="aws-sigv4"),
        pytest.param("Authorization: Bearer planted-opaque-token-0987", "planted-opaque", "Authorization:",
                     id="bearer-after-marker"),
        pytest.param("sent Bearer planted-opaque-token-0987 upstream", "planted-opaque", "upstream", id="bearer"),
        pytest.param("Proxy-Authorization: Basic dXNlcjpwbGFudGVk", "dXNlcjpwbGFudGVk", "Proxy-Authorization:",
                     id="basic"),
        pytest.param("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnbmF0dXJlLXBsYW50ZWQ", "eyJzdWIi", "jwt",
                     id="jwt"),
        pytest.param("ghp_plantedABCDEFGHIJKLMNOPQRSTUVWXYZ01 and github_pat_11ABCDEFG0planted_abcdefghijklmnop",
                     "planted", " and ", id="github"),
        pytest.param("hf_plantedABCDEFGHIJKLMNOPQRSTUV gsk_plantedABCDEFGHIJKLMNOPQRSTUV", "planted", " ",
                     id="huggingface-groq"),
        pytest.param("?key=planted-query-key-55&alt=sse", "planted", "&alt=sse", id="query-key"),
        pytest.param('x-api-key: "planted key with spaces"', "planted", 'x-api-key: "***"', id="quoted-value"),
        pytest.param("client_secret=planted0secret&grant=1", "planted0secret", "&grant=1", id="client-secret"),
        pytest.param("password=hunter2;host=db", "hunter2", ";host=db", id="password-param"),
        pytest.param("Invalid prompt: ... my password is hunter2", "hunter2", "my password is ***", id="password-prose"),
        pytest.param("the secret was 'open sesame please'", "sesame", "the secret was '***'", id="secret-prose"),
        pytest.param("Cookie: session=planted-cookie-value", "planted-cookie", "Cookie:", id="cookie"),
        pytest.param("postgresql://metrics:plantedPW@db:5432/llm", "plantedPW", "postgresql://metrics:***@db:5432/llm",
                     id="url-userinfo"),
    ],
)
def test_secret_is_replaced_and_the_rest_kept(text, secret, kept):
    redacted = redact(text)
    assert secret not in redacted
    assert "***" in redacted
    assert kept in redacted


@pytest.mark.parametrize(
    "text",
    [
        "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29876.",
        "This model's maximum context length is 128000 tokens. However, you requested 130000 tokens.",
        "max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens",
        "Your API key is invalid",  # "is" after a key: prose, not a value
        "the token is expired",
        "invalid x-api-key",
        "API key not valid. Please pass a valid API key.",
        "model: claude-sonet-4-5",
        "The model `gpt-4o-mini` does not exist or you do not have access to it.",
        "llm openai-compatible gpt-fake-2026-01-01 200 | latency 304ms | ttft 303ms | tokens 11→6",
        "risk-free desk-top task-force",
        "reverse:http://127.0.0.1:9@0.0.0.0:8081",  # a mode spec: a port, then the listen address
        "/v1/chat/completions",
        "",
    ],
)
def test_text_without_secrets_is_unchanged(text):
    assert redact(text) == text


@pytest.mark.parametrize(
    ("path", "redacted"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1beta/models/gemini-2.0-flash:streamGenerateContent", "/v1beta/models/gemini-2.0-flash:streamGenerateContent"),
        ("/openai/deployments/gpt-4o-prod/chat/completions", "/openai/deployments/gpt-4o-prod/chat/completions"),
        ("/v1/keys/sk-planted-path-key-1234/chat/completions", "/v1/keys/***/chat/completions"),
        ("/gw/AIzaSyPlantedPathKey0123456/v1beta/models/gemini-2.0-flash:generateContent",
         "/gw/***/v1beta/models/gemini-2.0-flash:generateContent"),
        ("/proxy/key=planted-path-key/v1/messages", "/proxy/key=***/v1/messages"),  # the value ends at its segment
    ],
)
def test_path_keeps_its_segments_and_loses_its_secrets(path, redacted):
    assert redact_path(path) == redacted


def test_warnings_and_their_tracebacks_are_redacted_info_lines_untouched(caplog):
    import logging

    from addon.redact import REDACT_WARNINGS

    logger = logging.getLogger("tests.redact.filter")
    logger.addFilter(REDACT_WARNINGS)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            try:
                raise ValueError("server said: Incorrect API key provided: sk-abc***...Zq9w")
            except ValueError as exc:
                logger.warning("writing failed, will retry: %s", exc, exc_info=True)
            logger.info("tokens 11→6 for key=%s", "kept-as-is")  # info lines are redacted where made
    finally:
        logger.removeFilter(REDACT_WARNINGS)
    warning, info = caplog.records
    assert "Zq9w" not in caplog.text and "Incorrect API key provided: ***" in warning.getMessage()
    assert "Traceback" in warning.getMessage() and warning.exc_info is None
    assert info.getMessage() == "tokens 11→6 for key=kept-as-is"
