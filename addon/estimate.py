"""Token counts estimated where a stream reported none (usage_source `estimated`). Pure.

A streamed Chat Completions or Completions call that did not ask for its usage, to an upstream
the proxy could not safely ask for it (`addon.stream_usage`), tells no counts at all. Rather than
NULL, its row gets these estimates, marked as such and priced as such (the report shows their
costs with `~`). No tokenizer: the proxy does not know the model's, and loading one per model
would cost more than the call. Two rules of thumb instead, each where it holds:

- Output: servers that stream token by token (OpenAI, vLLM, llama.cpp, Ollama, SGLang) send one
  token per content chunk, so when a stream's content chunks average at most
  `TOKEN_CHUNK_MAX_CHARS` characters, each chunk counts as one token: exact for those servers.
  A server that batches tokens into chunks (Azure OpenAI's content filter, gateways) makes longer
  chunks; then its characters / `CHARS_PER_TOKEN` (OpenAI's rule of thumb for English text; code
  and other languages take more tokens per character, so this tends to undercount them).
- Input: only for a request that is text alone (chat messages whose content is text, or a
  Completions prompt); anything the rule cannot count (images, audio, files, tools, functions) leaves
  it NULL. Characters / `CHARS_PER_TOKEN`, plus OpenAI's framing of a chat (each message
  `PER_MESSAGE_TOKENS`, the reply's priming `REPLY_PRIMING_TOKENS`). A Completions prompt given as
  token ids is counted exactly.
"""

from __future__ import annotations

from math import ceil
from typing import Any

CHARS_PER_TOKEN = 4
TOKEN_CHUNK_MAX_CHARS = 8
PER_MESSAGE_TOKENS = 3
REPLY_PRIMING_TOKENS = 3
# A request with any of these keys carries more than text to the model (tool or function
# definitions, an audio reply's voice): no estimate of its input.
_NOT_TEXT_KEYS = ("tools", "functions", "audio")


def output_tokens(content_events: int, output_chars: int) -> int | None:
    """Output tokens of a stream with `content_events` content-bearing chunks holding
    `output_chars` characters of generated text (None without any)."""
    if content_events <= 0:
        return None
    if output_chars <= TOKEN_CHUNK_MAX_CHARS * content_events:
        return content_events
    return ceil(output_chars / CHARS_PER_TOKEN)


def chat_prompt_tokens(body: dict[str, Any]) -> int | None:
    """Input tokens of a Chat Completions request that is text alone; None otherwise."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or any(body.get(key) for key in _NOT_TEXT_KEYS):
        return None
    chars = 0
    for message in messages:
        if not isinstance(message, dict) or message.get("tool_calls") or message.get("function_call"):
            return None
        text = _text_chars(message.get("content"))
        if text is None:
            return None
        chars += text + len(message.get("role") or "") + len(message.get("name") or "")
    return ceil(chars / CHARS_PER_TOKEN) + PER_MESSAGE_TOKENS * len(messages) + REPLY_PRIMING_TOKENS


def completion_prompt_tokens(body: dict[str, Any]) -> int | None:
    """Input tokens of a Completions request: a prompt of text, or of token ids (exact)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return ceil(len(prompt) / CHARS_PER_TOKEN)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return sum(ceil(len(p) / CHARS_PER_TOKEN) for p in prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return len(prompt)
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
            return sum(map(len, prompt))
    return None


def _text_chars(content: Any) -> int | None:
    """Characters of a message's content when it is text alone (a string, or text parts)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return None
    chars = 0
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            return None
        chars += len(part["text"])
    return chars
