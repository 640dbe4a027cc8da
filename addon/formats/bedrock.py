"""AWS Bedrock Runtime: Converse (`/model/{id}/converse[-stream]`) and InvokeModel with a
Claude body (`/model/{id}/invoke[-with-response-stream]`).

The model id is only in the URL (URL-encoded: `us.amazon.nova-micro-v1%3A0`). Streams are AWS
event streams (binary frames, `addon.wire.eventstream`): the meter hands each frame's
`:event-type` and JSON payload here, and an exception frame as `exception:<type>`.
ConverseStream: text in `contentBlockDelta`, the stop reason in `messageStop`, usage in the last
`metadata` frame. InvokeModelWithResponseStream wraps each Anthropic stream event, base64
encoded, in a `chunk` frame: those are read by the Anthropic parser.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import unquote

from .anthropic_messages import AnthropicMessages
from .base import ResponseFacts, as_int, non_empty_str, request_fields
from .errors import read_error

_MODEL = re.compile(r"/model/([^/]+)/")
EXCEPTION_PREFIX = "exception:"


def model_from_path(path: str) -> str | None:
    found = _MODEL.search(path)
    return unquote(found.group(1)) if found else None


def _read_exception(facts: ResponseFacts, event: str | None, obj: Any) -> bool:
    """An exception frame (`throttlingException`, `modelStreamErrorException`, …) fails the call."""
    if event is None or not event.startswith(EXCEPTION_PREFIX):
        return False
    message = obj.get("message") or obj.get("Message") if isinstance(obj, dict) else None
    facts.set_error(event[len(EXCEPTION_PREFIX):] or "bedrock_exception", message)
    return True


class BedrockConverse:
    operation = "chat"
    family = "aws-bedrock"
    path_suffix = "/converse-stream"
    shape_key = "messages"
    array_streams = False

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        return "/model/" in path and path.endswith(("/converse", "/converse-stream")) and self.shape_key in body

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return request_fields(model_from_path(path), path.endswith("/converse-stream"), body.get(self.shape_key),
                              body.get("inferenceConfig"), max_tokens_keys=("maxTokens",), top_p_key="topP")

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        if not isinstance(obj, dict) or _read_exception(facts, event, obj):
            return False
        if event == "contentBlockDelta" and isinstance(obj.get("delta"), dict):
            delta = obj["delta"]
            text = bool(delta.get("text"))
            generated = text or bool(delta.get("toolUse") or delta.get("reasoningContent"))
            facts.content_events += generated
            facts.text_events += text
            return generated
        if event == "contentBlockStart":
            start = obj.get("start")
            if isinstance(start, dict) and start.get("toolUse"):
                facts.tool_calls = True
        elif event == "messageStop":
            facts.finish_reason = non_empty_str(obj.get("stopReason")) or facts.finish_reason
            facts.terminated = True
        elif event == "metadata" and isinstance(obj.get("usage"), dict):
            _apply_converse_usage(facts, obj["usage"])
        return False

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if "output" not in obj and "usage" not in obj:
            message = obj.get("message") or obj.get("Message")
            if not read_error(facts, obj, "bedrock_error") and message is not None:
                facts.set_error("bedrock_error", message)
            return
        facts.finish_reason = non_empty_str(obj.get("stopReason"))
        if isinstance(obj.get("usage"), dict):
            _apply_converse_usage(facts, obj["usage"])


def _apply_converse_usage(facts: ResponseFacts, usage: dict[str, Any]) -> None:
    """Converse reports input without the cache, like Anthropic: the cache counts are added."""
    cache_read = as_int(usage.get("cacheReadInputTokens"))
    cache_write = as_int(usage.get("cacheWriteInputTokens"))
    raw_input = as_int(usage.get("inputTokens"))
    facts.prompt_tokens = None if raw_input is None else raw_input + (cache_read or 0) + (cache_write or 0)
    facts.cached_tokens, facts.cache_creation_tokens = cache_read, cache_write
    facts.completion_tokens = as_int(usage.get("outputTokens"))


class BedrockInvokeAnthropic:
    operation = "messages"
    family = "aws-bedrock"
    path_suffix = "/invoke-with-response-stream"
    shape_key = "anthropic_version"  # a Claude body on Bedrock names the API version, not the model
    array_streams = False

    def __init__(self) -> None:
        self._anthropic = AnthropicMessages()

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        return "/model/" in path and path.endswith(("/invoke", "/invoke-with-response-stream")) and self.shape_key in body

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        fields = self._anthropic.request_fields(path, body)
        fields["request_model"] = model_from_path(path)
        fields["is_streaming"] = path.endswith("/invoke-with-response-stream")
        return fields

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        if not isinstance(obj, dict) or _read_exception(facts, event, obj):
            return False
        inner = _decode_chunk(obj.get("bytes"))
        if inner is None:
            facts.malformed_events += 1
            return False
        return self._anthropic.on_event(facts, None, inner)

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        if isinstance(obj, dict) and "type" not in obj and ("message" in obj or "Message" in obj):
            facts.set_error("bedrock_error", obj.get("message") or obj.get("Message"))
            return
        self._anthropic.on_body(facts, obj)


def _decode_chunk(value: Any) -> Any:
    if not isinstance(value, str):
        return None
    try:
        return json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return None
