"""What a response tells about a call, and the shape every wire format module fills in.

A format module is pure: it gets parsed JSON objects (one per stream event, or the whole body)
and writes what it finds into a `ResponseFacts`. Framing, decompression and timing live
elsewhere, so adding a provider means adding one module and registering it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

# What of a provider's error message a row keeps (docs/recorded.md): a message that
# echoes the request (a validation error quoting a prompt) must not store the prompt.
ERROR_MESSAGE_MAX_CHARS = 300
QUOTE_MAX_CHARS = 32
_LONG_QUOTE = re.compile(
    rf"(?<!\w)(?:'[^'\n]{{{QUOTE_MAX_CHARS + 1},}}?'|\"[^\"\n]{{{QUOTE_MAX_CHARS + 1},}}?\""
    rf"|`[^`\n]{{{QUOTE_MAX_CHARS + 1},}}?`|\u201c[^\u201d\n]{{{QUOTE_MAX_CHARS + 1},}}?\u201d)(?!\w)"
)
_INPUT_ECHO = re.compile(r"\binput(?:_value)?=.*?(?=, input_type=|\]|$)")  # pydantic: input_value={...}
_ERROR_KIND = re.compile(r"[\w.:/\-]{1,80}")


@dataclass(slots=True)
class ResponseFacts:
    """Values read from a response; None means the response did not say (never 0 by default)."""

    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None  # cache reads, part of prompt_tokens
    cache_creation_tokens: int | None = None  # cache writes, part of prompt_tokens
    reasoning_tokens: int | None = None
    # The audio part of the input, its cached part and of the output (the Realtime API): no column
    # of their own, they price the call (audio costs several times text).
    audio_input_tokens: int | None = None
    cached_audio_tokens: int | None = None
    audio_output_tokens: int | None = None
    finish_reason: str | None = None  # the provider's own value
    finish_category: str | None = None  # set only where the reason alone does not tell it
    tool_calls: bool = False  # the output called a tool (Gemini and Ollama still say "stop")
    prompt_eval_duration_ns: int | None = None  # the server's own timings (Ollama)
    eval_duration_ns: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    events: int = 0  # data-bearing stream events (the SSE `[DONE]` sentinel excluded)
    content_events: int = 0  # events carrying generated content: text, reasoning or tool calls
    text_events: int = 0  # events carrying visible assistant text only
    output_chars: int = 0  # characters of generated output seen in stream events (for an estimate)
    malformed_events: int = 0  # events whose data was not valid JSON
    terminated: bool = False  # the format's own end-of-stream marker was seen
    oversized_events: int = 0  # stream events longer than addon.wire.MAX_EVENT_BYTES: not read
    read_limit: int | None = None  # the body was read only this far (bytes, decoded): the rest was not

    def set_error(self, error_type: str | None, message: str | None) -> None:
        """Keeps the first error: later ones are usually consequences of it. The message is
        kept as `kept_message` says."""
        if self.error_type is None:
            self.error_type = error_kind(error_type) or "error"
            self.error_message = kept_message(message)

    def set_model(self, value: Any) -> None:
        """Keeps the first non-empty model: a stream repeats it (Azure's first chunk leaves it empty)."""
        if self.model is None:
            self.model = non_empty_str(value)


class WireFormat(Protocol):
    """One API's request and response shape (e.g. OpenAI Chat Completions)."""

    operation: str  # chat, text_completion, responses, embeddings, messages, generate_content
    # The API's owner, as a provider is named (`openai`, `anthropic`, `gemini`): a call to a host
    # with no known name is stored as `<family>-compatible`.
    family: str
    path_suffix: str  # the request path ends with this
    shape_key: str  # a request body of this API has this top-level key
    # A streamed response may come as `application/json`: one JSON array written element by
    # element (Gemini without alt=sse), to be metered as a stream all the same.
    array_streams: bool

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        """Whether a request to `path` (query stripped) with this JSON body is this API."""

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """request_model, is_streaming, max_tokens, temperature, top_p, message_count; `path`
        (query stripped) is where some APIs name the model (Gemini, Azure deployments)."""

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        """Reads one stream event; True when it carried generated content."""

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        """Reads a whole non-streamed response body."""


def kept_message(message: Any, limit: int = ERROR_MESSAGE_MAX_CHARS) -> str | None:
    """What a row keeps of an error message: whitespace collapsed; a quoted passage longer than
    QUOTE_MAX_CHARS and a pydantic `input_value=…` (both quote the request) replaced by `'…'`; at
    most `limit` characters. Secrets are taken out later, of every stored message
    (`addon.redact`, in `addon.record.build_row`)."""
    if message is None:
        return None
    text = message if isinstance(message, str) else str(message)
    text = " ".join(text.split())
    if "=" in text:
        text = _INPUT_ECHO.sub("input_value=…", text)
    text = _LONG_QUOTE.sub("'…'", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_kind(value: Any) -> str | None:
    """A provider's error code or type as `error_type`: a code-like word (`rate_limit_exceeded`,
    `RESOURCE_EXHAUSTED`, `throttlingException`), never free text; else None."""
    return value if isinstance(value, str) and _ERROR_KIND.fullmatch(value) else None


def as_int(value: Any) -> int | None:
    """A token count from JSON: ints (and integral floats) only; bools and junk are unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def non_empty_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def request_fields(model: str | None, streaming: bool, messages: Any = None, settings: Any = None, *,
                   max_tokens_keys: tuple[str, ...] = ("max_tokens",), top_p_key: str = "top_p") -> dict[str, Any]:
    """The request columns every format fills in. `settings` is where the API keeps its sampling
    settings (the body itself, or an object such as Gemini's `generationConfig`), read under the
    API's own names; the first of `max_tokens_keys` that is set wins. Wrong types are unknown."""
    settings = settings if isinstance(settings, dict) else {}
    max_tokens = next((settings[key] for key in max_tokens_keys if settings.get(key) is not None), None)
    return {
        "request_model": model,
        "is_streaming": streaming,
        "max_tokens": as_int(max_tokens),
        "temperature": as_float(settings.get("temperature")),
        "top_p": as_float(settings.get(top_p_key)),
        "message_count": len(messages) if isinstance(messages, list) else None,
    }
