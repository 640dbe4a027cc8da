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
            "error body is not a provider error object (72 bytes, no content type)",
            id="html-without-title-described",
        ),
        pytest.param(500, b"Internal Server Error", "http_500",
                     "error body is not a provider error object (21 bytes, no content type)", id="plain-text-described"),
        pytest.param(
            400, b"Invalid prompt: my password is hunter2\n", "http_400",
            "error body is not a provider error object (39 bytes, no content type)", id="plain-text-echo-described",
        ),
        pytest.param(503, b"", "http_503", None, id="empty"),
        pytest.param(503, b" \r\n\t", "http_503", None, id="whitespace-only"),
        pytest.param(
            500,
            b'{"error": {"message": "cut off',
            "http_500",
            "error body is not a provider error object (30 bytes, no content type)",
            id="invalid-json-described",
        ),
        pytest.param(404, b'{"detail":"Not Found"}', "http_404", "Not Found", id="fastapi-detail"),
        pytest.param(
            422, b'{"detail":[{"loc":["body","messages"],"msg":"Field required","input":{"prompt":"hunter2"}}]}',
            "http_422", "error body is not a provider error object (92 bytes, no content type)",
            id="fastapi-validation-list-described",
        ),
    ],
)
def test_error_body_gives_type_and_message(status, body, error_type, message):
    assert error_from_body(status, body) == (error_type, message)


def test_error_object_without_message_keeps_its_type_and_no_message():
    # Its other fields (param, details) can quote the request.
    body = _json({"error": {"type": "server_error", "code": None, "param": "my password is hunter2"}})
    assert error_from_body(500, body) == ("server_error", None)


def test_error_body_description_names_the_content_type():
    assert error_from_body(502, b"Bad gateway", "text/plain; charset=utf-8") == (
        "http_502", "error body is not a provider error object (11 bytes, text/plain)")


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        pytest.param(
            "1 validation error for ChatCompletionRequest messages.0.content Input should be a valid string "
            "[type=string_type, input_value={'text': 'my password is hunter2'}, input_type=dict]",
            "1 validation error for ChatCompletionRequest messages.0.content Input should be a valid string "
            "[type=string_type, input_value=…, input_type=dict]",
            id="pydantic-input-value",
        ),
        pytest.param(
            "Invalid value for 'content': 'Summarise this confidential merger memo for the board'.",
            "Invalid value for 'content': '…'.",
            id="long-quote-elided-short-quote-kept",
        ),
        pytest.param(
            "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
            "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
            id="apostrophes-are-no-quotes",
        ),
        pytest.param("The model `gpt2` does not exist.", "The model `gpt2` does not exist.", id="short-code-quote"),
    ],
)
def test_quoted_request_text_in_a_provider_message_is_elided(message, kept):
    assert error_from_body(400, _json({"error": {"message": message, "type": "invalid_request_error"}})) == (
        "invalid_request_error", kept)


def test_error_type_that_is_free_text_is_not_kept_as_a_kind():
    body = _json({"error": {"message": "bad", "type": "the prompt said: my password is hunter2"}})
    assert error_from_body(400, body) == ("http_400", "bad")


@pytest.mark.parametrize(
    "body",
    [
        _json({"error": {"message": "x" * 2000, "type": "invalid_request_error"}}),
        _json({"error": "x" * 2000}),
    ],
    ids=["openai-envelope", "ollama-string"],
)
def test_long_message_is_truncated_to_300_chars(body):
    _, message = error_from_body(500, body)
    assert ERROR_MESSAGE_MAX_CHARS == 300
    assert message == "x" * 299 + "\u2026"


def test_long_html_title_is_truncated_to_100_chars():
    _, message = error_from_body(500, b"<html><head><title>" + b"x" * 2000 + b"</title></head></html>")
    assert message == "x" * 99 + "\u2026"


def test_message_of_exactly_300_chars_is_kept_whole():
    _, message = error_from_body(400, _json({"error": {"message": "y" * 300}}))
    assert message == "y" * 300


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
