"""OpenAI Chat Completions and legacy Completions, and every server that speaks them.

Covers api.openai.com, Azure OpenAI deployment paths, vLLM, llama.cpp, Ollama's /v1, OpenRouter,
Groq, Mistral, DeepSeek, Together. Their deviations all fit one rule set: scan every chunk for
`usage` (or Groq's `x_groq.usage`, llama.cpp's `timings`) and keep the last non-null one; take the
last non-null `finish_reason`; take the first non-empty `model`; any chunk with a top-level
`error` is a failure even on HTTP 200.
"""

from __future__ import annotations

from typing import Any

from .. import estimate
from .azure import requested_model
from .base import ResponseFacts, as_int, non_empty_str, request_fields
from .errors import read_error, read_stream_error

# Delta keys that carry generated output. Reasoning and tool-call deltas count for time to
# first token: the model is producing tokens, the user is just not shown them as text.
_GENERATED_KEYS = ("content", "reasoning_content", "reasoning", "tool_calls", "function_call", "refusal")


class OpenAIChat:
    operation = "chat"
    family = "openai"
    path_suffix = "/chat/completions"
    shape_key = "messages"
    messages_key: str | None = "messages"
    array_streams = False

    def matches(self, path: str, body: dict[str, Any]) -> bool:
        return path.endswith(self.path_suffix) and self.shape_key in body

    def request_fields(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get(self.messages_key) if self.messages_key else None
        fields = request_fields(requested_model(path, body), body.get("stream") is True, messages, body,
                                max_tokens_keys=("max_tokens", "max_completion_tokens"))
        if fields["is_streaming"]:  # only a stream may lack its usage
            fields["prompt_tokens_estimate"] = self._prompt_estimate(body)
        return fields

    def _prompt_estimate(self, body: dict[str, Any]) -> int | None:
        return estimate.chat_prompt_tokens(body)

    def on_event(self, facts: ResponseFacts, event: str | None, obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        if event == "error" or obj.get("error"):
            read_stream_error(facts, obj)
        choices = _choices(obj)
        self._read_common(facts, obj, choices)
        generated = text = False
        chars = 0
        for choice in choices:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if content:  # the usual chunk: one look, not one per key
                    generated = text = True
                    chars += len(content) if isinstance(content, str) else 0
                elif any(delta.get(key) for key in _GENERATED_KEYS):
                    generated = True
                    chars += _other_chars(delta)
            else:
                content = choice.get("text")  # legacy completions
                if content:
                    generated = text = True
                    chars += len(content) if isinstance(content, str) else 0
        # Counted per event, however many choices (n > 1) it carries.
        facts.content_events += generated
        facts.text_events += text
        facts.output_chars += chars
        return generated

    def on_body(self, facts: ResponseFacts, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        read_error(facts, obj)
        self._read_common(facts, obj)

    def _read_common(self, facts: ResponseFacts, obj: dict[str, Any],
                     choices: list[dict[str, Any]] | None = None) -> None:
        if facts.model is None:  # facts.set_model, inline: this runs once per chunk
            facts.model = non_empty_str(obj.get("model"))
        for choice in _choices(obj) if choices is None else choices:
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                facts.finish_reason = reason
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            groq = obj.get("x_groq")
            usage = groq.get("usage") if isinstance(groq, dict) else None
        if isinstance(usage, dict):
            apply_usage(facts, usage)
        elif isinstance(obj.get("timings"), dict) and facts.prompt_tokens is None:
            _apply_llama_cpp_timings(facts, obj["timings"])


def _other_chars(delta: dict[str, Any]) -> int:
    """Characters of a delta's reasoning, refusal and tool calls (names and arguments)."""
    chars = sum(len(v) for key in ("reasoning_content", "reasoning", "refusal") if isinstance(v := delta.get(key), str))
    calls = delta.get("tool_calls")
    functions = [c.get("function") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    functions.append(delta.get("function_call"))
    for function in functions:
        if isinstance(function, dict):
            chars += sum(len(v) for key in ("name", "arguments") if isinstance(v := function.get(key), str))
    return chars


def _choices(obj: dict[str, Any]) -> list[dict[str, Any]]:
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return []
    if len(choices) == 1 and isinstance(choices[0], dict):
        return choices  # the usual single choice, without building a new list
    return [c for c in choices if isinstance(c, dict)]


def apply_usage(facts: ResponseFacts, usage: dict[str, Any], input_key: str = "prompt_tokens",
                output_key: str = "completion_tokens") -> None:
    """OpenAI's usage block, under Chat's names or the Responses API's (`input_tokens`,
    `output_tokens`), each with its `…_details`. Usage is cumulative wherever it repeats: the last
    block replaces, never adds."""
    facts.prompt_tokens = as_int(usage.get(input_key))
    facts.completion_tokens = as_int(usage.get(output_key))
    facts.total_tokens = as_int(usage.get("total_tokens"))
    input_details = usage.get(input_key + "_details")
    cached = input_details.get("cached_tokens") if isinstance(input_details, dict) else None
    if cached is None and input_key == "prompt_tokens":
        cached = usage.get("prompt_cache_hit_tokens")  # DeepSeek's own name, on Chat only
    facts.cached_tokens = as_int(cached)
    output_details = usage.get(output_key + "_details")
    if isinstance(output_details, dict):
        facts.reasoning_tokens = as_int(output_details.get("reasoning_tokens"))
    else:
        facts.reasoning_tokens = None


def _apply_llama_cpp_timings(facts: ResponseFacts, timings: dict[str, Any]) -> None:
    """llama-server without include_usage reports counts only here: prompt_n is the newly
    processed part of the prompt, cache_n the part reused from the KV cache."""
    prompt_n, cache_n = as_int(timings.get("prompt_n")), as_int(timings.get("cache_n"))
    predicted_n = as_int(timings.get("predicted_n"))
    if prompt_n is not None:
        facts.prompt_tokens = prompt_n + (cache_n or 0)
        facts.cached_tokens = cache_n
    facts.completion_tokens = predicted_n
    if facts.prompt_tokens is not None and predicted_n is not None:
        facts.total_tokens = facts.prompt_tokens + predicted_n


class OpenAICompletions(OpenAIChat):
    """Legacy /v1/completions: the same chunk shape, text in `choices[].text`."""

    operation = "text_completion"
    path_suffix = "/completions"
    shape_key = "prompt"
    messages_key = None  # a prompt is not a list of messages

    def _prompt_estimate(self, body: dict[str, Any]) -> int | None:
        return estimate.completion_prompt_tokens(body)
