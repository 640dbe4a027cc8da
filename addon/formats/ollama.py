"""Ollama's native API: `POST /api/chat` and `POST /api/generate`.

Streams by default (`"stream": false` turns it off), as NDJSON: one JSON object per line. Counts
and the server's own timings (nanoseconds) are only on the last line, `"done": true`:
`prompt_eval_count` (input), `eval_count` (output), `prompt_eval_duration`, `eval_duration`.
`/api/chat` carries text in `message.content`, `/api/generate` in `response`; thinking models
add `thinking`; tool calls come whole in `message.tool_calls`. An error mid-stream is a line
`{"error": "…"}` on a 200 response.
"""

from __future__ import annotations

from typing import Any

from .base import ResponseFacts, as_int, non_empty_str, request_fields
from .errors import read_error


class OllamaChat:
    operation = "chat"
    family = "ollama"
    path_suffix = "/api/chat"
    shape_key = "messages"
    messages_key: str | None = "messages"
    array_streams = False

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        return path.endswith(self.path_suffix) and self.shape_key in body and "model" in body

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get(self.messages_key) if self.messages_key else None
        return request_fields(non_empty_str(body.get("model")), body.get("stream") is not False, messages,
                              body.get("options"), max_tokens_keys=("num_predict",))

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        self.on_body(facts, obj)
        text, other = self._output(obj)
        facts.content_events += text or other
        facts.text_events += text
        return text or other

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if read_error(facts, obj, "ollama_error"):
            return
        facts.set_model(obj.get("model"))
        message = obj.get("message")
        if isinstance(message, dict) and message.get("tool_calls"):
            facts.tool_calls = True
        if obj.get("done") is True:
            facts.terminated = True
            facts.finish_reason = non_empty_str(obj.get("done_reason")) or facts.finish_reason
            facts.prompt_tokens = as_int(obj.get("prompt_eval_count"))
            facts.completion_tokens = as_int(obj.get("eval_count"))
            facts.prompt_eval_duration_ns = as_int(obj.get("prompt_eval_duration"))
            facts.eval_duration_ns = as_int(obj.get("eval_duration"))

    def _output(self, obj: dict[str, Any]) -> tuple[bool, bool]:
        """(visible text, other generated output) in one line."""
        message = obj.get("message")
        if not isinstance(message, dict):
            return False, False
        return bool(message.get("content")), bool(message.get("thinking") or message.get("tool_calls"))


class OllamaGenerate(OllamaChat):
    """`/api/generate`: a prompt, not messages; text in `response`, thinking in `thinking`."""

    operation = "text_completion"
    path_suffix = "/api/generate"
    shape_key = "prompt"
    messages_key = None  # a prompt is not a list of messages

    def _output(self, obj: dict[str, Any]) -> tuple[bool, bool]:
        return bool(obj.get("response")), bool(obj.get("thinking"))
