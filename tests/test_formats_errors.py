"""error_from_body / error_from_object: every provider's error envelope, and bodies that are none."""

from __future__ import annotations

import json

import pytest

from addon.formats.base import ERROR_MESSAGE_MAX_CHARS
from addon.formats.errors import error_from_body, error_from_object

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
CLOUDFLARE_502 = (
    b'<!DOCTYPE html>\n<html lang="en-US">\n<head>\n<TITLE>\n  api.openai.com | 502: Bad gateway\n</TITLE>'
    b"<style>body{margin:0}</style></head><body><h1>Bad gateway</h1></body></html>"
)


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("status", "body", "error_type", "message"),
    [
        pytest.param(
            400,
            _json(
                {
                    "error": {
                        "message": "Unknown parameter: 'quality'.",
                        "type": "invalid_request_error",
                        "param": "quality",
                        "code": "unknown_parameter",
                    }
                }
            ),
            "unknown_parameter",
            "Unknown parameter: 'quality'.",
            id="openai-string-code-wins",
        ),
        pytest.param(
            401,
            _json(
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                }
            ),
            "invalid_request_error",
            "Incorrect API key provided.",
            id="openai-null-code-falls-back-to-type",
        ),
        pytest.param(
            429,
            _json(
                {
                    "error": {
                        "code": "429",
                        "message": "Requests to the ChatCompletions_Create Operation "
                        "have exceeded call rate limit.",
                    }
                }
            ),
            "http_429",
            "Requests to the ChatCompletions_Create Operation have exceeded call rate limit.",
            id="azure-numeric-string-code-is-not-a-kind",
        ),
        pytest.param(
            404,
            _json(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "DeploymentNotFound",
                        "message": "The API deployment for this resource does not exist.",
                    }
                }
            ),
            "DeploymentNotFound",
            "The API deployment for this resource does not exist.",
            id="azure-deployment-not-found",
        ),
        pytest.param(
            404,
            _json(
                {
                    "type": "error",
                    "error": {"type": "not_found_error", "message": "model: claude-sonet-4-5"},
                    "request_id": "req_011",
                }
            ),
            "not_found_error",
            "model: claude-sonet-4-5",
            id="anthropic",
        ),
        pytest.param(
            529,
            _json({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            "overloaded_error",
            "Overloaded",
            id="anthropic-overloaded",
        ),
        pytest.param(
            429,
            _json(
                {
                    "error": {
                        "code": 429,
                        "message": "Provider returned error",
                        "metadata": {"provider_name": "Google", "raw": "rate-limited upstream"},
                    },
                    "user_id": "user_1",
                }
            ),
            "http_429",
            "Provider returned error: rate-limited upstream",  # metadata.raw names the real cause
            id="openrouter-int-code",
        ),
        pytest.param(
            404,
            _json(
                {
                    "error": {
                        "code": 404,
                        "message": "models/gemini-3.6-flahs is not found for API version v1beta",
                        "status": "NOT_FOUND",
                    }
                }
            ),
            "NOT_FOUND",
            "models/gemini-3.6-flahs is not found for API version v1beta",
            id="google-status",
        ),
        pytest.param(
            503,
            _json([{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}]),
            "UNAVAILABLE",
            "The model is overloaded.",
            id="google-streamed-array",
        ),
        pytest.param(
            400,
            _json(
                {
                    "object": "error",
                    "message": "This model's maximum context length is 2048 tokens.",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            ),
            "BadRequestError",
            "This model's maximum context length is 2048 tokens.",
            id="vllm-old",
        ),
        pytest.param(
            404,
            _json(
                {
                    "object": "error",
                    "message": "The model `gpt2` does not exist.",
                    "type": "NotFoundError",
                    "param": None,
                    "code": 404,
                }
            ),
            "NotFoundError",
            "The model `gpt2` does not exist.",
            id="vllm-old-not-found",
        ),
        pytest.param(
            404,
            _json({"error": 'model "llama9" not found, try pulling it first'}),
            "http_404",
            'model "llama9" not found, try pulling it first',
            id="ollama-string-error",
        ),
        pytest.param(
            500,
            b'    {\n        "error": {\n            "message": "The server had an error.",\n'
            b'            "type": "server_error"\n        }\n    }\n',
            "server_error",
            "The server had an error.",
            id="indented-with-leading-whitespace",
        ),
        pytest.param(502, NGINX_502, "http_502", "502 Bad Gateway", id="html-nginx-title"),
        pytest.param(
            502, CLOUDFLARE_502, "http_502", "api.openai.com | 502: Bad gateway", id="html-cloudflare-title"
        ),
        pytest.param(
            503,
            b"<html><body><h1>Service Unavailable</h1>\n<p>Try later.</p></body></html>",
            "http_503",
            "Service Unavailable Try later.",
            id="html-without-title-tags-stripped",
        ),
        pytest.param(500, b"Internal Server Error", "http_500", "Internal Server Error", id="plain-text"),
        pytest.param(
            504, b"upstream request timeout\n", "http_504", "upstream request timeout", id="plain-text-envoy"
        ),
        pytest.param(503, b"", "http_503", None, id="empty"),
        pytest.param(503, b" \r\n\t", "http_503", None, id="whitespace-only"),
        pytest.param(
            500,
            b'{"error": {"message": "cut off',
            "http_500",
            '{"error": {"message": "cut off',
            id="invalid-json-kept-as-text",
        ),
        pytest.param(
            404, b'{"detail":"Not Found"}', "http_404", '{"detail":"Not Found"}', id="json-not-an-envelope"
        ),
    ],
)
def test_error_body_gives_type_and_message(status, body, error_type, message):
    assert error_from_body(status, body) == (error_type, message)


def test_error_object_without_message_keeps_the_envelope_as_message():
    error_type, message = error_from_body(500, _json({"error": {"type": "server_error", "code": None}}))
    assert error_type == "server_error"
    assert json.loads(message) == {"type": "server_error", "code": None}


@pytest.mark.parametrize(
    "body",
    [
        _json({"error": {"message": "x" * 2000, "type": "invalid_request_error"}}),
        _json({"error": "x" * 2000}),
        b"x" * 2000,
        b"<html><head><title>" + b"x" * 2000 + b"</title></head></html>",
    ],
    ids=["openai-envelope", "ollama-string", "plain-text", "html-title"],
)
def test_long_message_is_truncated_to_500_chars(body):
    _, message = error_from_body(500, body)
    assert ERROR_MESSAGE_MAX_CHARS == 500
    assert len(message) == 500
    assert message == "x" * 499 + "\u2026"


def test_message_of_exactly_500_chars_is_kept_whole():
    _, message = error_from_body(400, _json({"error": {"message": "y" * 500}}))
    assert message == "y" * 500


def test_message_whitespace_is_collapsed_to_single_spaces():
    _, message = error_from_body(400, _json({"error": {"message": "line one\n\n  line\ttwo "}}))
    assert message == "line one line two"


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(
            {"error": {"message": "Token limit reached", "code": 400}},
            (None, "Token limit reached"),
            id="openrouter-in-stream",
        ),
        pytest.param(
            {
                "error": {
                    "message": "Tool call validation failed",
                    "type": "invalid_request_error",
                    "code": "tool_use_failed",
                    "status_code": 400,
                }
            },
            ("tool_use_failed", "Tool call validation failed"),
            id="groq-in-stream",
        ),
        pytest.param(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            ("overloaded_error", "Overloaded"),
            id="anthropic-event",
        ),
        pytest.param({"type": "error", "message": "bare"}, (None, "bare"), id="type-error-without-kind"),
        pytest.param({"error": "boom"}, (None, "boom"), id="ollama-string"),
    ],
)
def test_error_object_is_recognised(obj, expected):
    assert error_from_object(obj) == expected


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(
            {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": []}, id="normal-chunk"
        ),
        pytest.param({"choices": [], "error": None}, id="error-null"),
        pytest.param({"error": ""}, id="error-empty-string"),
        pytest.param([{"error": {"message": "x"}}], id="list"),
        pytest.param("error", id="string"),
        pytest.param(None, id="none"),
    ],
)
def test_non_error_object_is_not_an_error(obj):
    assert error_from_object(obj) is None


def test_error_object_message_is_not_truncated_there():
    # Truncation belongs to error_from_body / ResponseFacts.set_error, not to the envelope reader.
    assert error_from_object({"error": {"message": "z" * 800}}) == (None, "z" * 800)
