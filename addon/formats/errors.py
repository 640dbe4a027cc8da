"""Error bodies and in-stream error objects, in the envelopes providers use.

OpenAI and most compatible servers: {"error": {"message", "type", "code", "param"}}; Anthropic:
{"type": "error", "error": {"type", "message"}}; OpenRouter: integer `code`; vLLM (old):
{"object": "error", "message", "type"}; Ollama: {"error": "text"}; FastAPI: {"detail": "text"}.

Only those messages are kept (as `kept_message` shapes them), and an HTML page's `<title>` (a
gateway's "502 Bad Gateway"). Any other body (plain text, other JSON, an HTML page without a
title) can be anything, the request's own text included: it becomes `http_<status>` with a
description of the body, never its content.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import ResponseFacts, error_kind, kept_message

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
TITLE_MAX_CHARS = 100


def error_from_object(obj: Any) -> tuple[str | None, str | None] | None:
    """(error_type, message) when `obj` is an error envelope, else None."""
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, dict):
        return _kind(err), _message(err)
    if isinstance(err, str) and err:
        return None, err
    if obj.get("object") == "error" or obj.get("type") == "error":
        return _kind(obj), _message(obj)
    return None


def read_error(facts: ResponseFacts, obj: Any, default_type: str = "error") -> bool:
    """Records `obj`'s error envelope, if it is one (typed `default_type` when it names no
    type); True when it was."""
    found = error_from_object(obj)
    if found is None:
        return False
    facts.set_error(found[0] or default_type, found[1])
    return True


def read_stream_error(facts: ResponseFacts, obj: Any) -> None:
    """An event the stream itself marks as an error fails the call, whatever its shape."""
    if not read_error(facts, obj, "stream_error"):
        facts.set_error("stream_error", None)


def _kind(err: dict[str, Any]) -> str | None:
    """The most specific machine-readable name: a string `code`, else `type`, else `status`."""
    code = err.get("code")
    if isinstance(code, str) and code and not code.isdigit() and error_kind(code):
        return code
    for key in ("type", "status"):
        value = err.get(key)
        if isinstance(value, str) and value and value != "error" and error_kind(value):
            return value
    return None


def _message(err: dict[str, Any]) -> str | None:
    """The provider's message; an error object without one gives none (its other fields, such
    as `param` or `details`, can quote the request)."""
    message = err.get("message")
    metadata = err.get("metadata")
    raw = metadata.get("raw") if isinstance(metadata, dict) else None
    if isinstance(message, str) and isinstance(raw, str) and raw:
        return f"{message}: {raw}"  # OpenRouter: the upstream provider's own words
    if isinstance(message, str):
        return message
    return None


def error_from_body(status: int, body: bytes, content_type: str | None = None) -> tuple[str, str | None]:
    """(error_type, message) for a failed non-streamed response of any shape."""
    fallback = f"http_{status}"
    stripped = body.strip()
    if not stripped:
        return fallback, None
    if stripped[:1] in (b"{", b"["):
        try:
            obj = json.loads(stripped)
        except ValueError:
            obj = None
        if isinstance(obj, list) and obj:
            obj = obj[0]  # Gemini's streamed-array mode wraps errors in an array
        found = error_from_object(obj)
        if found is None and isinstance(obj, dict) and isinstance(obj.get("detail"), str):
            found = (None, obj["detail"])  # FastAPI's own errors ({"detail": "Not Found"})
        if found is not None:
            return found[0] or fallback, kept_message(found[1])
    title = _TITLE.search(stripped[:65536])
    if title:
        text = kept_message(_TAGS.sub(" ", title.group(1).decode("utf-8", "replace")), TITLE_MAX_CHARS)
        if text:
            return fallback, text
    return fallback, describe_body("error body is not a provider error object", body, content_type)


def describe_body(what: str, body: bytes, content_type: str | None) -> str:
    """A body named by its size and type, never by its content: `what (1234 bytes, text/html)`."""
    media = (content_type or "").split(";", 1)[0].strip().lower() or "no content type"
    return f"{what} ({len(body)} bytes, {media})"
