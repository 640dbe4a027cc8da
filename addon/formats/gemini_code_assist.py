"""Gemini Code Assist: what Gemini CLI sends when signed in with a Google account.

`POST https://cloudcode-pa.googleapis.com/v1internal:generateContent` and
`…/v1internal:streamGenerateContent?alt=sse` carry a Gemini request wrapped in an envelope:
`{"model", "project", "user_prompt_id", "request": {"contents", "generationConfig", …}}`, the
model in the body (not the path, as Gemini's own API has it). Each answer, the whole body or each
SSE event, wraps a `GenerateContentResponse`: `{"response": {"candidates", "usageMetadata",
"modelVersion", …}, "traceId"}`. Unwrapped, it is metered exactly as Gemini's (`addon.formats.gemini`):
cumulative usage, thoughts as output. Errors are Google's `{"error": {…}}`, not wrapped.
`:countTokens` is no generation and is not recorded (its path is no candidate).
"""

from __future__ import annotations

from typing import Any

from .base import ResponseFacts, non_empty_str, request_fields
from .gemini import GENERATE, STREAM, GeminiGenerateContent

# The API's version segment: the method follows it directly, with no `models/{model}` between.
_VERSION = "/v1internal"
_PATHS = (_VERSION + GENERATE, _VERSION + STREAM)
_GEMINI = GeminiGenerateContent()


def unwrap(obj: Any) -> Any:
    """The `GenerateContentResponse` inside a Code Assist answer; anything else (an error
    envelope, an answer without `response`) as it is."""
    if isinstance(obj, dict) and isinstance(obj.get("response"), dict):
        return obj["response"]
    return obj


class GeminiCodeAssist:
    operation = "generate_content"
    family = "gemini-code-assist"
    path_suffix = _VERSION + GENERATE
    shape_key = "request"
    array_streams = True  # as Gemini's: without alt=sse a stream would be one JSON array

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        return path.endswith(_PATHS) and self.shape_key in body

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        inner = body.get(self.shape_key)
        inner = inner if isinstance(inner, dict) else {}
        config = inner.get("generationConfig") or inner.get("generation_config")
        return request_fields(non_empty_str(body.get("model")), path.endswith(STREAM), inner.get("contents"), config,
                              max_tokens_keys=("maxOutputTokens",), top_p_key="topP")

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        return _GEMINI.on_event(facts, event, unwrap(obj))

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        _GEMINI.on_body(facts, unwrap(obj))
