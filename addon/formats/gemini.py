"""Google Gemini API and Vertex AI: `…/models/{model}:generateContent` and `:streamGenerateContent`.

The request body has no model: it is the last path segment before the method, and whether the
call streams is the method itself. A stream is SSE with `?alt=sse` (CRLF framing), else one JSON
array written element by element as `application/json` (often gzip-encoded). Every element is a
whole `GenerateContentResponse` whose `usageMetadata` is cumulative: the last one wins, never a
sum. `candidatesTokenCount` excludes thinking (`thoughtsTokenCount`): both are output here, so
`completion_tokens` is their sum and `reasoning_tokens` the thoughts. Counts of zero are left out
of `usageMetadata`, so a missing count is 0 when the block itself is there.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from .base import ResponseFacts, as_int, non_empty_str, request_fields
from .errors import read_error

GENERATE = ":generateContent"
STREAM = ":streamGenerateContent"
# Parts that are generated output besides text: tool calls and code the model wrote or ran.
_TOOL_PARTS = ("functionCall",)
_OTHER_PARTS = ("executableCode", "codeExecutionResult", "inlineData")


def model_from_path(path: str) -> str | None:
    """`/v1beta/models/gemini-2.5-flash:generateContent` -> `gemini-2.5-flash` (also Vertex's
    `…/publishers/google/models/{model}:…` and `tunedModels/{name}:…`)."""
    segment = path.rsplit("/", 1)[-1]
    name = segment.split(":", 1)[0]
    return unquote(name) or None


class GeminiGenerateContent:
    operation = "generate_content"
    path_suffix = GENERATE
    family = "gemini"
    shape_key = "contents"
    array_streams = True

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        return path.endswith((GENERATE, STREAM)) and self.shape_key in body

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        config = body.get("generationConfig") or body.get("generation_config")
        return request_fields(model_from_path(path), path.endswith(STREAM), body.get(self.shape_key), config,
                              max_tokens_keys=("maxOutputTokens",), top_p_key="topP")

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        self.on_body(facts, obj)
        generated = text = False
        for candidate in _list(obj.get("candidates")):
            content = candidate.get("content")
            for part in _list(content.get("parts") if isinstance(content, dict) else None):
                if part.get("text"):
                    generated = True
                    text = text or not part.get("thought")
                elif any(part.get(key) for key in _TOOL_PARTS + _OTHER_PARTS):
                    generated = True
        facts.content_events += generated
        facts.text_events += text
        return generated

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if read_error(facts, obj):
            return
        facts.set_model(obj.get("modelVersion"))
        for candidate in _list(obj.get("candidates")):
            if non_empty_str(candidate.get("finishReason")):
                facts.finish_reason = candidate["finishReason"]
            content = candidate.get("content")
            for part in _list(content.get("parts") if isinstance(content, dict) else None):
                if any(part.get(key) for key in _TOOL_PARTS):
                    facts.tool_calls = True
        feedback = obj.get("promptFeedback")
        if isinstance(feedback, dict) and non_empty_str(feedback.get("blockReason")) and facts.finish_reason is None:
            facts.finish_reason = feedback["blockReason"]  # a blocked prompt has no candidates
            facts.finish_category = "content_filter"
        if isinstance(obj.get("usageMetadata"), dict):
            _apply_usage(facts, obj["usageMetadata"])


def _apply_usage(facts: ResponseFacts, usage: dict[str, Any]) -> None:
    prompt = as_int(usage.get("promptTokenCount"))
    tool_prompt = as_int(usage.get("toolUsePromptTokenCount")) or 0
    candidates = as_int(usage.get("candidatesTokenCount")) or 0
    thoughts = as_int(usage.get("thoughtsTokenCount"))
    facts.prompt_tokens = None if prompt is None else prompt + tool_prompt
    facts.completion_tokens = candidates + (thoughts or 0)
    facts.reasoning_tokens = thoughts
    facts.cached_tokens = as_int(usage.get("cachedContentTokenCount"))
    facts.total_tokens = as_int(usage.get("totalTokenCount"))


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
