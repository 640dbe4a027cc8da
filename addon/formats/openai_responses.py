"""OpenAI Responses API (`POST /v1/responses`), also served by Azure, OpenRouter, llama.cpp.

A stream is SSE with `event: <type>` and the same `type` in the data. The model is known from
`response.created`; usage arrives only in the one terminal event (`response.completed`,
`response.incomplete` or `response.failed`), which repeats the whole response object. There is
no `[DONE]`: the terminal event ends the stream. The finish reason is the response's `status`.
A mid-stream failure is an `error` event, then `response.failed`.
"""

from __future__ import annotations

from typing import Any

from .azure import requested_model
from .base import ResponseFacts, non_empty_str, request_fields
from .errors import read_error, read_stream_error
from .openai_chat import apply_usage

_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
# Deltas of generated output. Reasoning, refusals and tool arguments count for time to first
# token like text does: the model is producing tokens.
_TEXT_DELTAS = ("response.output_text.delta",)
_OTHER_DELTAS = (
    "response.refusal.delta",
    "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta",
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
    "response.code_interpreter_call_code.delta",
    "response.mcp_call_arguments.delta",
    "response.audio.transcript.delta",
)
_TOOL_ITEMS = ("function_call", "custom_tool_call", "mcp_call")
# incomplete_details.reason -> finish_category
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class OpenAIResponses:
    operation = "responses"
    family = "openai"
    path_suffix = "/responses"
    shape_key = "input"
    array_streams = False

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        return path.endswith(self.path_suffix) and ("input" in body or "prompt" in body)

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return request_fields(requested_model(path, body), body.get("stream") is True, body.get("input"), body,
                              max_tokens_keys=("max_output_tokens",))

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        kind = obj.get("type") or event
        if kind == "error" or event == "error":
            read_stream_error(facts, obj if "error" in obj else {"error": obj})
            return False
        response = obj.get("response")
        if isinstance(response, dict):
            self._read_response(facts, response, final=kind in _TERMINAL)
        if kind in _TERMINAL:
            facts.terminated = True
        item = obj.get("item")
        if isinstance(item, dict) and item.get("type") in _TOOL_ITEMS:
            facts.tool_calls = True
        if kind in _TEXT_DELTAS and obj.get("delta"):
            facts.content_events += 1
            facts.text_events += 1
            return True
        if kind in _OTHER_DELTAS and obj.get("delta"):
            facts.content_events += 1
            return True
        return False

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("object") == "response" or "output" in obj or "status" in obj:
            self._read_response(facts, obj, final=True)
            return
        read_error(facts, obj)

    def _read_response(self, facts: ResponseFacts, response: dict[str, Any], *, final: bool) -> None:
        facts.set_model(response.get("model"))
        if not final:
            return
        status = non_empty_str(response.get("status"))
        if status is not None:
            facts.finish_reason = status
        details = response.get("incomplete_details")
        if status == "incomplete" and isinstance(details, dict):
            facts.finish_category = _INCOMPLETE.get(details.get("reason", ""), "other")
        for item in response.get("output") or ():
            if isinstance(item, dict) and item.get("type") in _TOOL_ITEMS:
                facts.tool_calls = True
        error = response.get("error")
        if isinstance(error, dict):
            read_error(facts, {"error": error}, "response_failed")
        elif status == "failed":
            facts.set_error("response_failed", "the response ended with status failed")
        usage = response.get("usage")
        if isinstance(usage, dict):
            apply_usage(facts, usage, "input_tokens", "output_tokens")
