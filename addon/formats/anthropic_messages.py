"""Anthropic Messages (`POST /v1/messages`), also LM Studio's and llama.cpp's copies of it.

Anthropic's `input_tokens` excludes the prompt cache: cache reads and writes are reported apart,
so `prompt_tokens` here is input + cache read + cache creation (all input, as everywhere else).
A stream reports usage twice: `message_start` (input and cache counts, a placeholder output
count that is never used) and `message_delta` (cumulative output, the stop reason, and on newer
API versions input and cache counts that supersede the first ones). `ping` is not content;
thinking and tool-use deltas are generated content for time to first token.
"""

from __future__ import annotations

from typing import Any

from .base import ResponseFacts, as_int, non_empty_str, request_fields
from .errors import read_error, read_stream_error

# delta type -> (generated content, visible text), by the key holding the delta's payload
_DELTAS = {
    "text_delta": ("text", True),
    "thinking_delta": ("thinking", False),
    "input_json_delta": ("partial_json", False),
    "citations_delta": ("citation", False),
}
_TOOL_BLOCKS = ("tool_use", "server_tool_use", "mcp_tool_use")


class AnthropicMessages:
    operation = "messages"
    path_suffix = "/messages"
    family = "anthropic"
    shape_key = "messages"
    array_streams = False

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        # `/messages` is a common path: the API's required `model` keeps other JSON APIs out.
        return path.endswith(self.path_suffix) and self.shape_key in body and "model" in body

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return request_fields(non_empty_str(body.get("model")), body.get("stream") is True,
                              body.get(self.shape_key), body)

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        kind = obj.get("type") or event
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            message = obj["message"]
            facts.set_model(message.get("model"))
            if isinstance(message.get("usage"), dict):
                _apply_usage(facts, message["usage"], with_output=False)
        elif kind == "content_block_delta":
            return _read_delta(facts, obj.get("delta"))
        elif kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") in _TOOL_BLOCKS:
                facts.tool_calls = True
                facts.content_events += 1  # the tool's name is generated output
                return True
        elif kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and non_empty_str(delta.get("stop_reason")):
                facts.finish_reason = delta["stop_reason"]
            if isinstance(obj.get("usage"), dict):
                _apply_usage(facts, obj["usage"], with_output=True)
        elif kind == "message_stop":
            facts.terminated = True
        elif kind == "error" or event == "error":
            read_stream_error(facts, obj)
        return False

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if read_error(facts, obj):
            return
        facts.set_model(obj.get("model"))
        if non_empty_str(obj.get("stop_reason")):
            facts.finish_reason = obj["stop_reason"]
        for block in obj.get("content") or ():
            if isinstance(block, dict) and block.get("type") in _TOOL_BLOCKS:
                facts.tool_calls = True
        if isinstance(obj.get("usage"), dict):
            _apply_usage(facts, obj["usage"], with_output=True)


def _read_delta(facts: ResponseFacts, delta: Any) -> bool:
    if not isinstance(delta, dict):
        return False
    kind = _DELTAS.get(delta.get("type", ""))
    if kind is None or not delta.get(kind[0]):
        return False  # signature_delta, an empty first tool-argument delta, unknown types
    facts.content_events += 1
    facts.text_events += kind[1]
    return True


def _apply_usage(facts: ResponseFacts, usage: dict[str, Any], *, with_output: bool) -> None:
    """A count present here supersedes the earlier one; an absent count keeps it."""
    known_input = facts.prompt_tokens
    if known_input is not None:
        known_input -= (facts.cached_tokens or 0) + (facts.cache_creation_tokens or 0)
    raw_input = _count(usage, "input_tokens", known_input)
    cache_read = _count(usage, "cache_read_input_tokens", facts.cached_tokens)
    cache_write = _count(usage, "cache_creation_input_tokens", facts.cache_creation_tokens)
    facts.cached_tokens, facts.cache_creation_tokens = cache_read, cache_write
    if raw_input is not None:
        facts.prompt_tokens = raw_input + (cache_read or 0) + (cache_write or 0)
    if with_output:
        # message_start's output count is a placeholder (1..7); only message_delta's is real.
        facts.completion_tokens = _count(usage, "output_tokens", facts.completion_tokens)


def _count(usage: dict[str, Any], key: str, previous: int | None) -> int | None:
    value = as_int(usage.get(key))
    return previous if value is None else value
