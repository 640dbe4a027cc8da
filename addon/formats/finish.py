"""`finish_category`: the provider's own finish reason mapped to one small vocabulary.

`finish_reason` keeps what the provider said (`end_turn`, `STOP`, `completed`, `eos`, ...); the
category lets calls from every provider be counted together. A reason not listed here is
`other`: new provider values must not be guessed into a category that means something else.
"""

from __future__ import annotations

CATEGORIES = ("stop", "length", "tool_calls", "content_filter", "error", "other")

_BY_REASON = {
    # A natural end, or a stop sequence the caller asked for.
    "stop": "stop",
    "end_turn": "stop",  # Anthropic, Bedrock
    "stop_sequence": "stop",
    "eos": "stop",  # Together
    "completed": "stop",  # OpenAI Responses status
    # The output was cut at a token limit.
    "length": "length",
    "max_tokens": "length",  # Anthropic, Gemini (MAX_TOKENS), Bedrock
    "max_output_tokens": "length",  # OpenAI Responses incomplete_details.reason
    "model_length": "length",  # Mistral
    "model_context_window_exceeded": "length",  # Anthropic
    # The model handed control to a tool.
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # OpenAI legacy
    "tool_use": "tool_calls",  # Anthropic, Bedrock
    # Withheld or cut by a safety system.
    "content_filter": "content_filter",
    "refusal": "content_filter",  # Anthropic
    "safety": "content_filter",  # Gemini
    "recitation": "content_filter",
    "blocklist": "content_filter",
    "prohibited_content": "content_filter",
    "spii": "content_filter",
    "image_safety": "content_filter",
    "image_prohibited_content": "content_filter",
    "image_recitation": "content_filter",
    "guardrail_intervened": "content_filter",  # Bedrock
    "content_filtered": "content_filter",
    # The provider says generation failed.
    "error": "error",
    "failed": "error",  # OpenAI Responses status
}


def finish_category(reason: str | None, *, failed: bool = False, tool_calls: bool = False,
                    override: str | None = None) -> str | None:
    """`error` for any failed call; else the category of `reason`; None when nothing finished.

    Gemini and Ollama end a tool call with a plain stop (`STOP`, `stop`): a natural stop whose
    output called a tool is `tool_calls`, as OpenAI and Anthropic report it themselves.
    """
    if failed:
        return "error"
    if override is not None:
        return override
    if reason is None:
        return None
    category = _BY_REASON.get(reason.lower(), "other")
    if category == "stop" and tool_calls:
        return "tool_calls"
    return category
