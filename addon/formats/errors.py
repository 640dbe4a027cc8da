"""Error bodies and in-stream error objects, in the envelopes providers use.

OpenAI and most compatible servers: {"error": {"message", "type", "code", "param"}}; Anthropic:
{"type": "error", "error": {"type", "message"}}; OpenRouter: integer `code`; vLLM (old):
{"object": "error", "message", "type"}; Ollama: {"error": "text"}. Anything else (an HTML page
from a gateway, plain text) becomes `http_<status>` with the page's title or text as message.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import ResponseFacts, truncate

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")


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
    if isinstance(code, str) and code and not code.isdigit():
        return code
    for key in ("type", "status"):
        value = err.get(key)
        if isinstance(value, str) and value and value != "error":
            return value
    return None


def _message(err: dict[str, Any]) -> str | None:
    message = err.get("message")
    metadata = err.get("metadata")
    raw = metadata.get("raw") if isinstance(metadata, dict) else None
    if isinstance(message, str) and isinstance(raw, str) and raw:
        return f"{message}: {raw}"  # OpenRouter: the upstream provider's own words
    if isinstance(message, str):
        return message
    return json.dumps(err)[:1000]


def error_from_body(status: int, body: bytes) -> tuple[str, str | None]:
    """(error_type, message) for a failed non-streamed response of any shape."""
    fallback = f"http_{status}"
    stripped = body.strip()
    if stripped[:1] in (b"{", b"["):
        try:
            obj = json.loads(stripped)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
            obj = None
        if isinstance(obj, list) and obj:
            obj = obj[0]  # Gemini's streamed-array mode wraps errors in an array
        found = error_from_object(obj)
        if found is not None:
            return found[0] or fallback, truncate(found[1])
    return fallback, _text_message(stripped)


def _text_message(body: bytes) -> str | None:
    if not body:
        return None
    title = _TITLE.search(body[:65536])
    text = (title.group(1) if title else body[:4096]).decode("utf-8", "replace")
    return truncate(_TAGS.sub(" ", text)) or None
