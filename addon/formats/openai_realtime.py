"""OpenAI Realtime API (`/v1/realtime`, a WebSocket; also Azure's `/openai/realtime`).

Only a WebSocket carries it (`addon.formats.websocket` follows the socket): the client asks for a
response with a `response.create` event; the server answers `response.created`, deltas that name
their `response_id`, and `response.done`, whose `response` holds the status, the status details
(why it was incomplete, cancelled or failed) and the usage, with text and audio token details
under `input_token_details` / `output_token_details`. The response never names the model: the
session does (`session.created`, `session.updated`). Event names of the beta interface
(`response.text.delta`, `response.audio.delta`) and of the GA one (`response.output_text.delta`,
`response.output_audio.delta`) are both read.
"""

from __future__ import annotations

from typing import Any

from .base import ResponseFacts, as_int, non_empty_str, request_fields
from .errors import read_error, read_stream_error

_TEXT_DELTAS = ("response.output_text.delta", "response.text.delta")
_OTHER_DELTAS = (
    "response.output_audio.delta", "response.audio.delta",
    "response.output_audio_transcript.delta", "response.audio_transcript.delta",
    "response.function_call_arguments.delta", "response.mcp_call_arguments.delta",
)
DONE = "response.done"
# status_details.reason of an incomplete response -> finish_category
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class OpenAIRealtime:
    operation = "realtime"
    family = "openai"
    path_suffix = "/realtime"
    shape_key = "response"
    array_streams = False

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        return False  # never an HTTP request body: only a WebSocket carries it

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """From a `response.create` event: its `response` holds the settings of this one response."""
        response = body.get("response")
        response = response if isinstance(response, dict) else {}
        return request_fields(non_empty_str(response.get("model")), True, response.get("input"), response,
                              max_tokens_keys=("max_output_tokens", "max_response_output_tokens"))

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        kind = obj.get("type")
        if kind == "error":
            read_stream_error(facts, obj)
            return False
        if kind in _TEXT_DELTAS or kind in _OTHER_DELTAS:
            if not obj.get("delta"):
                return False
            facts.content_events += 1
            if kind in _TEXT_DELTAS:
                facts.text_events += 1
            return True
        if kind == DONE and isinstance(obj.get("response"), dict):
            self.on_body(facts, obj["response"])
            facts.terminated = True
        return False

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        """A response object, as `response.done` carries it."""
        if not isinstance(obj, dict):
            return
        status = non_empty_str(obj.get("status"))
        facts.finish_reason = status
        details = obj.get("status_details")
        details = details if isinstance(details, dict) else {}
        if status == "incomplete":
            facts.finish_category = _INCOMPLETE.get(details.get("reason") or "", "other")
        elif status == "failed" and not read_error(facts, {"error": details.get("error")}, "response_failed"):
            facts.set_error("response_failed", "the response ended with status failed")
        for item in obj.get("output") or ():
            if isinstance(item, dict) and item.get("type") in ("function_call", "mcp_call"):
                facts.tool_calls = True
        usage = obj.get("usage")
        if isinstance(usage, dict):
            _apply_usage(facts, usage)


def _apply_usage(facts: ResponseFacts, usage: dict[str, Any]) -> None:
    """Input and output are all tokens, text, audio and images; cached ones are part of the input."""
    facts.prompt_tokens = as_int(usage.get("input_tokens"))
    facts.completion_tokens = as_int(usage.get("output_tokens"))
    facts.total_tokens = as_int(usage.get("total_tokens"))
    inputs = usage.get("input_token_details")
    inputs = inputs if isinstance(inputs, dict) else {}
    outputs = usage.get("output_token_details")
    outputs = outputs if isinstance(outputs, dict) else {}
    cached = inputs.get("cached_tokens_details")
    facts.cached_tokens = as_int(inputs.get("cached_tokens"))
    facts.audio_input_tokens = as_int(inputs.get("audio_tokens"))
    facts.audio_output_tokens = as_int(outputs.get("audio_tokens"))
    facts.cached_audio_tokens = as_int(cached.get("audio_tokens")) if isinstance(cached, dict) else None
